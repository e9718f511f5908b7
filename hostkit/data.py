"""``[data.NAME]`` tables: what the host knows of data is what every table has.

A table has a name (its key), a ``type`` and usually a ``path`` resolved against
the run file's folder. Everything else (text columns, templates, arrays, batch
sizes) belongs to the plugin that registered the type:
``register.data_type(DataTypeSpec("jsonl", TextData, ...))``, where ``TextData``
subclasses :class:`DataTable` with its own options. The host structures a table
with that class (strict, with TOML paths in every error), resolves and checks its
``path=True`` fields, and hands the instance to passes (``context.data_config``).
Loading the examples is the plugin's business.
"""

from __future__ import annotations

import attrs

from hostkit.options import option


@attrs.frozen
class DataTable:
    """What every ``[data.NAME]`` table has; a data type's options class subclasses it."""

    type: str = option(help="the data type; `hostkit schema data` lists the installed ones")
    path: str | None = option(None, help="file or folder (relative to the run file)", path=True)


__all__ = ["DataTable"]
