"""Around every pass: duration, peak memory, and the library chatter it caused.

A ``wrapper=True`` implementation of ``hostkit_run_pass``: it sees every
step's call, whichever plugin registered the pass type. Library warnings and
log lines (:mod:`hostkit.capture`) land in the step's ``notes.library_warnings``
with their counts; the terminal gets at most one short line, and only when a
message matters (a RuntimeWarning, a log record at ERROR or above).
"""

from __future__ import annotations

import time
from typing import Any

from hostkit.capture import Captured, first_line
from hostkit.fsutil import peak_rss_mb, reset_peak_rss
from hostkit.plugins import hookimpl

NOTE = "library_warnings"


@hookimpl(wrapper=True)
def hostkit_run_pass(pass_type: str, config: Any, model: Any, context: Any) -> Any:
    captured = Captured()
    reset_peak_rss()
    start = time.perf_counter()
    try:
        with captured.block(own_code=context.run.base_dir):
            return (yield)
    finally:
        context.record.duration_s = round(time.perf_counter() - start, 3)
        context.record.peak_rss_mb = peak_rss_mb()
        _record(context, captured)


def _record(context: Any, captured: Captured) -> None:
    if not captured.messages:
        return
    merged = dict(context.record.notes.get(NOTE) or {})  # a pass may keep its own (hostkit-qat does)
    for message, count in captured.as_notes().items():
        merged[message] = merged.get(message, 0) + count
    context.record.notes[NOTE] = dict(sorted(merged.items()))
    if captured.serious and context.is_main_process:
        more = len(captured.serious) - 1
        extra = f" (+{more} more)" if more else ""
        print(f"    note: {first_line(captured.serious[0], 120)}{extra}; all {sum(merged.values())} library "
              f"messages in manifest.json, steps[{context.index}].notes.{NOTE}", file=context.run.stream, flush=True)
