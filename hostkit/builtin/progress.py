"""Progress display: one header line per run, ``[i/n] Pass ... done in Xs`` per step.

Progress messages from long work (training steps, layers) are shown on one
updating line on a terminal, and at most every few seconds otherwise, so CI
logs stay short but show that work is moving. Only rank 0 prints. The display
is an object registered as a plugin (pluggy registers instances), holding its
own state: when it last printed and whether a progress line is open.
"""

from __future__ import annotations

import time
from typing import Any

from hostkit import __version__
from hostkit.plugins import hookimpl

THROTTLE_S = 2.0


def _run(context: Any) -> Any:
    return getattr(context, "run", context)


def _label(context: Any) -> str:
    return f"[{context.index + 1}/{context.total}] {context.pass_type}"


def _why_cached(record: Any) -> str:
    """What the cache compared: the plugin's code when it is installed from a local folder, else its version."""
    plugin = record.plugin or {}
    if getattr(record, "plugin_code", None):
        what = "plugin code"
    elif plugin.get("version"):
        what = f"plugin version {plugin['version']}"
    else:
        what = "plugin"
    return f"same options, input and {what}; --no-cache runs it again"


class ProgressDisplay:
    """The host's progress lines (``hostkit.progress``)."""

    def __init__(self, throttle_s: float = THROTTLE_S) -> None:
        self.throttle_s = throttle_s
        self.last = 0.0
        self.open_line = False

    def _print(self, context: Any, text: str, **kwargs: Any) -> None:
        print(text, file=_run(context).stream, flush=True, **kwargs)

    def _end_line(self, context: Any) -> None:
        if self.open_line:
            self._print(context, "")
            self.open_line = False

    @hookimpl
    def hostkit_run_started(self, context: Any, steps: list) -> None:
        self.last, self.open_line = 0.0, False
        if not context.is_main_process:
            return
        self._print(context, f"hostkit {__version__} | {context.host.plugin_header()}")
        self._print(context, f"run: {context.config.source} -> {context.output_dir} "
                             f"({len(steps)} step{'s' * (len(steps) != 1)})")

    @hookimpl
    def hostkit_step_started(self, context: Any) -> None:
        if context.is_main_process:
            self._print(context, f"{_label(context)} ...{' (resuming)' if context.resuming else ''}")

    @hookimpl
    def hostkit_progress(self, context: Any, message: str, current: int | None, total: int | None) -> None:
        if not context.is_main_process:
            return
        stream = _run(context).stream
        now = time.monotonic()
        final = current is not None and total is not None and current >= total
        tty = hasattr(stream, "isatty") and stream.isatty()
        if not tty and not final and now - self.last < self.throttle_s:
            return
        self.last = now
        counter = f" {current}/{total}" if current is not None and total else ""
        line = f"    {message}{counter}"
        if tty:
            self._print(context, "\r" + line.ljust(78), end="")
            self.open_line = True
        else:
            self._print(context, line)

    @hookimpl
    def hostkit_step_finished(self, context: Any, record: Any) -> None:
        if not context.is_main_process:
            return
        self._end_line(context)
        if record.status == "cached":
            self._print(context, f"{_label(context)} ... unchanged, skipped (cached in {record.folder}/: {_why_cached(record)})")
        else:
            resumed = ", resumed" if record.resumed else ""
            self._print(context, f"{_label(context)} ... done in {record.duration_s:.1f}s{resumed} -> {record.folder}/")

    @hookimpl
    def hostkit_step_failed(self, context: Any, error: BaseException) -> None:
        if context.is_main_process:
            self._end_line(context)
            word = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            self._print(context, f"{_label(context)} ... {word}")

    @hookimpl
    def hostkit_run_finished(self, context: Any, records: list, error: BaseException | None) -> None:
        if context.is_main_process and error is None:
            self._print(context, f"done: {context.output_dir / 'manifest.json'}")
