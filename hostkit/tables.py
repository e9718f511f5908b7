"""The tables of a run file that belong to the host, and what planning makes of them.

``[output]`` (:class:`OutputConfig`), each planned ``[[passes]]`` step
(:class:`StepConfig`), the whole resolved run (:class:`RunConfig`) and what a
pass's ``check`` callback sees (:class:`CheckContext`). ``[model]`` tables are
model handles (:mod:`hostkit.handles`), ``[data.NAME]`` tables data types
(:mod:`hostkit.data`). :func:`read_toml` reads a run file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import attrs

from hostkit.errors import ConfigError
from hostkit.options import option

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@attrs.frozen
class OutputConfig:
    """The ``[output]`` table."""

    dir: str = option("runs/default", help="folder for step outputs and manifest.json (relative to the run file)", path=True)
    cache: bool = option(True, help="skip steps whose input and config are unchanged")


@attrs.frozen
class StepConfig:
    """One planned step: a ``[[passes]]`` table structured by its plugin's config class."""

    index: int
    spec: Any  # hostkit.registry.PassSpec
    config: Any
    options: dict[str, Any]  # the resolved options (plugins.toml defaults under run-file values)
    name: str | None = None  # optional step name (``name = "..."`` in the table)
    input: str | None = None  # None: the previous step's output; "model" or an earlier step's name

    @property
    def type(self) -> str:
        return self.spec.name

    @property
    def toml_path(self) -> str:
        return f"passes[{self.index}] ({self.spec.name})"

    @property
    def folder_name(self) -> str:
        return f"{self.index + 1:02d}-{(self.name or self.spec.name).lower()}"


@attrs.frozen
class RunConfig:
    """A whole run file, resolved."""

    source: Path
    model: Any
    data: dict[str, Any]  # name -> a DataTable subclass instance
    steps: list[StepConfig]
    output: OutputConfig
    raw: dict[str, Any]

    @property
    def base_dir(self) -> Path:
        return self.source.parent


@attrs.frozen
class CheckContext:
    """What a pass's ``check`` callback may look at during validation."""

    run_file: Path
    data: dict[str, Any]  # name -> a DataTable subclass instance
    model: Any
    #: the step's planned input: its model type, and what the plan knows of its fields (field -> set?),
    #: from [model] and the ``output_sets`` / ``output_clears`` of the steps before; None: unknown
    input_type: str | None = None
    input_fields: dict[str, bool] | None = None


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error is a ConfigError naming it."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): TOML files are UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
