"""``hostkit.config``: the names plugins import, from the modules that hold them.

* :mod:`hostkit.converter`: the strict cattrs converter (``structure_strict``, ``collect``, ``did_you_mean``);
* :mod:`hostkit.tables`: the host's run-file tables (``OutputConfig``, ``StepConfig``, ``RunConfig``,
  ``CheckContext``) and ``read_toml``;
* :mod:`hostkit.paths`: path resolution (``resolve_path``, ``resolve_local``, ``resolve_paths``, ``package_dir``);
* :mod:`hostkit.schema`: ``field_summary`` (option rows for ``hostkit schema`` and README tables).
"""

from __future__ import annotations

from hostkit.converter import collect, converter, did_you_mean, structure_strict
from hostkit.errors import ConfigError
from hostkit.options import non_negative, positive
from hostkit.paths import PACKAGE_SCHEME, package_dir, package_name, resolve_local, resolve_path, resolve_paths
from hostkit.schema import field_summary
from hostkit.tables import CheckContext, OutputConfig, RunConfig, StepConfig, read_toml

__all__ = [
    "PACKAGE_SCHEME", "CheckContext", "ConfigError", "OutputConfig", "RunConfig", "StepConfig",
    "collect", "converter", "did_you_mean", "field_summary", "non_negative", "package_dir", "package_name",
    "positive", "read_toml", "resolve_local", "resolve_path", "resolve_paths", "structure_strict",
]
