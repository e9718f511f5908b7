"""Options of the Echo pass."""

import attrs

from hostkit import DataTable, one_of, option, positive


@attrs.frozen
class EchoConfig:
    """Options of ``type = "Echo"``."""

    message: str = option("hello", help="text written to echo.txt")
    repeat: int = option(1, help="how many times to write it", validator=positive)
    scale: float = option(1.0, help="a float option (accepts TOML integers)")
    mode: str = option("plain", help="plain or upper", validator=one_of("plain", "upper"))
    fail: str | None = option(None, help="fail on purpose: 'expected' (PassError) or 'bug' (RuntimeError)",
                              validator=one_of("expected", "bug"))
    sleep_s: float = option(0.0, help="sleep this long (to test interruption)")
    train_data_config: str | None = option(None, help="a [data.NAME] table whose file's line count is written to lines.txt",
                                           data=True)


@attrs.frozen
class LinesData(DataTable):
    """``[data.NAME] type = "lines"``: a text file, one example per line (a data type of a third-party plugin)."""

    skip_blank: bool = option(False, help="do not count blank lines")
    comment: str | None = option(None, help="do not count lines starting with this prefix")
    min_lines: int = option(1, help="fail the pass when fewer lines are left", validator=positive)

    def __attrs_post_init__(self) -> None:
        if not self.path:
            raise ValueError("type = 'lines' needs a path")
