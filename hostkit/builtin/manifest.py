"""The manifest writer: ``manifest.json`` is replaced atomically after every step
and at the end of the run (rank 0 only)."""

from __future__ import annotations

from typing import Any

from hostkit.fsutil import atomic_write_json
from hostkit.plugins import hookimpl


def _write(run: Any) -> None:
    if run.is_main_process and run.output_dir.exists():
        atomic_write_json(run.output_dir / "manifest.json", run.manifest)


@hookimpl
def hostkit_step_finished(context: Any, record: Any) -> None:
    _write(context.run)


@hookimpl
def hostkit_run_finished(context: Any, records: list, error: BaseException | None) -> None:
    _write(context)
