"""Options of the Echo pass."""

import attrs

from hostkit import one_of, option, positive


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
    train_data_config: str | None = option(None, help="a [data.NAME] table whose file's line count is written to lines.txt")
