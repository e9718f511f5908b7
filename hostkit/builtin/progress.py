"""Progress display: one header line per run, ``[i/n] Pass ... done in Xs`` per step.

Progress messages from long work (training steps, layers) are shown on one
updating line on a terminal, and at most every few seconds otherwise, so CI
logs stay short but show that work is moving. Only rank 0 prints.
"""

from __future__ import annotations

import time
from typing import Any

from hostkit.plugins import hookimpl

_THROTTLE_S = 2.0


class _State:
    def __init__(self) -> None:
        self.last = 0.0
        self.open_line = False


def _stream(context: Any) -> Any:
    run = getattr(context, "run", context)
    return run.stream


def _main(context: Any) -> bool:
    run = getattr(context, "run", context)
    return run.is_main_process


def _state(context: Any) -> _State:
    run = getattr(context, "run", context)
    state = getattr(run, "_progress_state", None)
    if state is None:
        state = _State()
        run._progress_state = state
    return state


def _end_line(context: Any) -> None:
    state = _state(context)
    if state.open_line:
        print(file=_stream(context))
        state.open_line = False


@hookimpl
def hostkit_run_started(context: Any, steps: list) -> None:
    if not _main(context):
        return
    stream = context.stream
    print(f"hostkit {__import__('hostkit').__version__} | {context.host.plugin_header()}", file=stream)
    print(f"run: {context.config.source} -> {context.output_dir} ({len(steps)} step{'s' * (len(steps) != 1)})", file=stream)


def _label(context: Any) -> str:
    return f"[{context.index + 1}/{context.total}] {context.pass_type}"


@hookimpl
def hostkit_step_started(context: Any) -> None:
    if _main(context):
        resumed = " (resuming)" if context.resuming else ""
        print(f"{_label(context)} ...{resumed}", file=_stream(context), flush=True)


@hookimpl
def hostkit_progress(context: Any, message: str, current: int | None, total: int | None) -> None:
    if not _main(context):
        return
    state = _state(context)
    stream = _stream(context)
    now = time.monotonic()
    final = current is not None and total is not None and current >= total
    tty = hasattr(stream, "isatty") and stream.isatty()
    if not tty and not final and now - state.last < _THROTTLE_S:
        return
    state.last = now
    counter = f" {current}/{total}" if current is not None and total else ""
    line = f"    {message}{counter}"
    if tty:
        print("\r" + line.ljust(78), end="", file=stream, flush=True)
        state.open_line = True
    else:
        print(line, file=stream, flush=True)


@hookimpl
def hostkit_step_finished(context: Any, record: Any) -> None:
    if not _main(context):
        return
    _end_line(context)
    if record.status == "cached":
        print(f"{_label(context)} ... unchanged, skipped (cached in {record.folder}/)", file=_stream(context), flush=True)
    else:
        resumed = ", resumed" if record.resumed else ""
        print(f"{_label(context)} ... done in {record.duration_s:.1f}s{resumed} -> {record.folder}/", file=_stream(context), flush=True)


@hookimpl
def hostkit_step_failed(context: Any, error: BaseException) -> None:
    if _main(context):
        _end_line(context)
        word = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        print(f"{_label(context)} ... {word}", file=_stream(context), flush=True)


@hookimpl
def hostkit_run_finished(context: Any, records: list, error: BaseException | None) -> None:
    if _main(context) and error is None:
        print(f"done: {context.output_dir / 'manifest.json'}", file=context.stream, flush=True)
