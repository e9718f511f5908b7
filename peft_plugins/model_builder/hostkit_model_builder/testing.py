"""Helpers for tests and examples: onnxruntime-genai's view of a model folder (logits, greedy tokens).

Only onnxruntime-genai and numpy, imported inside the functions; one ``og.Model``
and one ``og.Adapters`` serve every adapter, switched per generator, as a user's
serving script would do it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np


class GenaiModel:
    """``og.Model(folder)`` plus its ``og.Adapters``: ``adapters`` maps a name to an ``.onnx_adapter`` file."""

    def __init__(self, folder: str | Path, adapters: Mapping[str, str | Path] | None = None):
        import onnxruntime_genai as og

        self._og = og
        self.model = og.Model(str(folder))
        self.adapters = og.Adapters(self.model) if adapters else None
        for name, file in (adapters or {}).items():
            self.adapters.load(str(file), name)

    def _generator(self, max_length: int, adapter: str | None) -> Any:
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, do_sample=False)
        generator = self._og.Generator(self.model, params)
        if adapter is not None:
            generator.set_active_adapter(self.adapters, adapter)
        return generator

    def prompt_logits(self, ids: Sequence[int], adapter: str | None = None) -> np.ndarray:
        """Logits ``[len(ids), vocab]`` of one prompt (a single forward over it)."""
        generator = self._generator(len(ids) + 1, adapter)
        generator.append_tokens(list(ids))
        return np.array(generator.get_output("logits"))[0].astype(np.float32)

    def greedy(self, ids: Sequence[int], new_tokens: int, adapter: str | None = None) -> list[int]:
        """Greedy continuation of ``ids`` (KV cache, the search settings of genai_config.json otherwise)."""
        generator = self._generator(len(ids) + new_tokens, adapter)
        generator.append_tokens(list(ids))
        out: list[int] = []
        while not generator.is_done() and len(out) < new_tokens:
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
        return out
