"""Keep library chatter out of the user's face without silencing it.

``torch.ao.quantization`` (eager QAT) is deprecated upstream and warns on every
``prepare_qat``/``convert``, each observer warns about ``reduce_range``,
``torch.jit`` warns that it is deprecated, torchao logs the optional kernels it
cannot load, and Lightning logs its device summary. :class:`Captured` records
those warnings and log lines (deduplicated, with counts) so that the pass can
put them in the manifest's notes and log each once at DEBUG level. Warnings
raised from the user's own code (a training loop, a LightningModule) are
re-emitted unchanged.

The host captures around every pass too (:mod:`hostkit.capture`, with the same
message format and the same ``notes.library_warnings`` key, counts merged); this
module adds what QAT knows: the loggers to take over inside its blocks, at DEBUG
level, and which warnings come from the libraries it drives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections import Counter
from typing import Iterator

from hostkit.capture import Collector as _HostCollector
from hostkit.capture import first_line as _first_line

log = logging.getLogger("hostkit_qat")

#: path fragments of the libraries whose warnings we capture
_LIBRARY_PARTS = tuple(os.sep + p + os.sep for p in (
    "torch", "torchao", "pytorch_lightning", "lightning", "lightning_fabric", "lightning_utilities", "hostkit_qat",
))

#: loggers whose records are captured while a block runs
LIBRARY_LOGGERS = ("torchao", "torch.utils._pytree", "pytorch_lightning", "lightning.pytorch", "lightning_fabric",
                   "lightning")


def _Collector(sink: Counter) -> logging.Handler:
    return _HostCollector(sink, level=logging.DEBUG)


class Captured:
    """Library warnings and log lines seen during :meth:`block`, deduplicated."""

    def __init__(self) -> None:
        self.messages: Counter = Counter()

    @contextlib.contextmanager
    def block(self, loggers: tuple[str, ...] = LIBRARY_LOGGERS) -> Iterator[None]:
        saved = []
        collector = _Collector(self.messages)
        for name in loggers:
            logger = logging.getLogger(name)
            saved.append((logger, list(logger.handlers), logger.propagate))
            logger.handlers = [collector]
            logger.propagate = False
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield
        finally:
            for logger, handlers, propagate in saved:
                logger.handlers = handlers
                logger.propagate = propagate
            for item in caught:
                if any(part in item.filename for part in _LIBRARY_PARTS):
                    self.messages[f"{item.category.__name__}: {_first_line(item.message)}"] += 1
                else:  # the user's own code: not ours to hide
                    warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)

    def as_notes(self) -> dict[str, int]:
        """Message -> count, for the manifest; each message is also logged once at DEBUG."""
        for message in self.messages:
            log.debug("captured: %s", message)
        return dict(sorted(self.messages.items()))
