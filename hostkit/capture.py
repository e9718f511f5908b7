"""Library chatter captured while a pass runs: recorded with counts, not printed.

Libraries warn and log things a user cannot act on (a deprecation inside a
dependency, an optional kernel that could not load). :class:`Captured` records
each distinct warning and log line seen during :meth:`Captured.block` with its
count, so that the manifest keeps them and the terminal stays readable.

* warnings raised from files under ``own_code`` (the run file's folder: the
  user's scripts) are re-emitted unchanged: they are the user's to see;
* log records of loggers named in ``passthrough`` (the host's and plugins'
  own ``hostkit*`` loggers) are left alone;
* every other warning, and every log record at ``level`` or above, is captured.
  Log records reach the capture through the root logger, and through the
  handlers of loggers that already had their own handlers when the block began.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterator

#: warning categories a user can act on (numerical trouble); a deprecation inside a library is not
MATTERS = (RuntimeWarning,)


def first_line(text: object, limit: int = 200) -> str:
    """The first line of ``text``, whitespace collapsed, at most ``limit`` characters."""
    line = " ".join(str(text).strip().split("\n", 1)[0].split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class Collector(logging.Handler):
    """A logging handler that counts ``"log <logger> <LEVEL>: <first line>"`` messages."""

    def __init__(self, sink: Counter, level: int = logging.DEBUG, passthrough: tuple[str, ...] = (),
                 forward: list[logging.Handler] | None = None):
        super().__init__(logging.DEBUG)
        self.sink = sink
        self.capture_level = level
        self.passthrough = passthrough
        self.forward = forward or []  # where passthrough records go (the root's own handlers)
        self.serious: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(self.passthrough):
            for handler in self.forward or [logging.lastResort]:
                if handler is not None and record.levelno >= handler.level:
                    handler.handle(record)
            return
        if record.levelno < self.capture_level:
            return
        try:
            message = f"log {record.name} {record.levelname}: {first_line(record.getMessage())}"
        except Exception:  # noqa: BLE001 - a log line must never break the pass
            return
        self.sink[message] += 1
        if record.levelno >= logging.ERROR and message not in self.serious:
            self.serious.append(message)


class Captured:
    """Warnings and log lines seen during :meth:`block`, deduplicated with counts."""

    def __init__(self) -> None:
        self.messages: Counter = Counter()
        self.serious: list[str] = []

    @contextlib.contextmanager
    def block(self, *, own_code: Path | None = None, level: int = logging.WARNING,
              passthrough: tuple[str, ...] = ("hostkit",)) -> Iterator["Captured"]:
        collector = Collector(self.messages, level, passthrough, forward=list(logging.getLogger().handlers))
        swapped = _swap_handlers(collector, passthrough)
        own = str(Path(own_code).resolve()) if own_code is not None else None
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield self
        finally:
            for logger, handlers, propagate in swapped:
                logger.handlers = handlers
                logger.propagate = propagate
            self._sort_warnings(caught, own)
            self.serious += [m for m in collector.serious if m not in self.serious]

    def _sort_warnings(self, caught: list[warnings.WarningMessage], own: str | None) -> None:
        for item in caught:
            if own is not None and str(item.filename).startswith(own):
                warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
                continue
            message = f"{item.category.__name__}: {first_line(item.message)}"
            self.messages[message] += 1
            if issubclass(item.category, MATTERS) and message not in self.serious:
                self.serious.append(message)

    def as_notes(self) -> dict[str, int]:
        """Message -> count, sorted, for the manifest."""
        return dict(sorted(self.messages.items()))


def _swap_handlers(collector: Collector, passthrough: tuple[str, ...]) -> list:
    """Point the root logger and every logger with its own handlers at ``collector``; return what to restore."""
    loggers = [logging.getLogger()]
    loggers += [lg for name, lg in logging.Logger.manager.loggerDict.items()
                if isinstance(lg, logging.Logger) and lg.handlers and not name.startswith(passthrough)]
    swapped = []
    for logger in loggers:
        swapped.append((logger, list(logger.handlers), logger.propagate))
        logger.handlers = [collector]
        if logger is not loggers[0]:
            logger.propagate = False
    return swapped
