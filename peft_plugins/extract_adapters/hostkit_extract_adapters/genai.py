"""Serving on onnxruntime-genai: one ``og.Model``, one ``og.Adapters``, the adapter chosen per request.

>>> from hostkit_extract_adapters.genai import GenaiSession
>>> session = GenaiSession("out/03-extractadapters")            # a folder with genai_config.json
>>> session.load_adapter("french", "french.onnx_adapter")       # checked against the model first
>>> session.load_adapter("legal", "legal-peft-adapter/")        # a PEFT folder, converted on the fly
>>> session.generate("The capital of France is", adapter="french", max_new_tokens=8)
>>> for piece in session.stream("Tell me", adapter="legal", chat=True, do_sample=True, top_p=0.9):
...     print(piece, end="")

onnxruntime-genai runs ModelBuilder graphs (int4 ``MatMulNBits``, fused
attention, a KV cache) and switches LoRA adapters per generator
(``Generator.set_active_adapter``) when the adapter weights are graph inputs
with zero-size defaults and the ``.onnx_adapter`` files name them. It checks
nothing when a file is loaded: a wrong name or shape fails only at the first
token ("Invalid input name", "Got invalid dimensions"), and a file made for
another base model runs silently. So every adapter is checked here before
``og.Adapters.load`` sees it, against the same :class:`ModelSignature` the
plain-onnxruntime path uses (names, shapes, dtype, base model identity), and
refused with the list of problems.

Generation is greedy unless sampling options are given; they are genai's own
search options (``do_sample``, ``temperature``, ``top_k``, ``top_p``,
``repetition_penalty``, ``random_seed``, ...). ``chat=True`` wraps the prompt
in the model's chat template (``chat_template.jinja`` / tokenizer config).

onnxruntime-genai is an optional dependency (the ``genai`` extra): this module
imports it only inside functions, so importing it costs nothing.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import attrs
import numpy as np

from hostkit.errors import MissingRequirement
from hostkit_extract_adapters.infer import InferenceError, read_adapter_source
from hostkit_extract_adapters.signature import AdapterMismatch, ModelSignature, read_signature

GENAI_CONFIG = "genai_config.json"

#: genai's search options that ``generate`` passes through (greedy when none is given)
SEARCH_OPTIONS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "random_seed",
                  "min_length", "no_repeat_ngram_size", "num_beams", "length_penalty")

_SESSION_STEP = "creating the onnxruntime-genai model"
_RUNTIME = "onnxruntime-genai"


def genai_folder(path: str | os.PathLike) -> Path | None:
    """The model folder when ``path`` is a genai model (its folder, or its decoder file), else None."""
    path = Path(path)
    if path.is_dir():
        return path if (path / GENAI_CONFIG).is_file() else None
    config = path.parent / GENAI_CONFIG
    if path.is_file() and config.is_file():
        try:
            decoder = json.loads(config.read_text())["model"]["decoder"]["filename"]
        except (ValueError, KeyError, TypeError):
            return None
        return path.parent if decoder == path.name else None
    return None


def import_genai() -> Any:
    try:
        import onnxruntime_genai as og
    except ImportError as exc:
        raise MissingRequirement(
            f"onnxruntime-genai is not installed ({exc}); install the extra: "
            "pip install 'hostkit-extract-adapters[genai]'") from None
    return og


def model_signature(model_file: Path) -> ModelSignature:
    """The adapter signature of a genai decoder graph (no slots when it takes no adapters, e.g. a
    ModelBuilder output with its adapter built in)."""
    try:
        return read_signature(model_file)
    except AdapterMismatch:
        return ModelSignature(slots={}, source=str(model_file))


@attrs.define
class GenaiAdapter:
    """An adapter checked against the model and loaded into ``og.Adapters``."""

    name: str
    source: str
    file: Path                 # the .onnx_adapter genai loaded (the source, or a fitted copy)
    metadata: dict[str, str]


class GenaiSession:
    """One onnxruntime-genai model with many adapters; ``generate`` takes the adapter per request.

    ``model``: the model folder (with ``genai_config.json``) or its decoder ``.onnx`` file.
    ``threads``: intra-op threads of the decoder session (default: genai's).
    ``allow_partial``: accept adapters that cover only some of the model's adapter weights.
    """

    def __init__(self, model: str | os.PathLike, *, threads: int | None = None, allow_partial: bool = False,
                 strict: bool = False):
        og = import_genai()
        self._og = og
        folder = genai_folder(model)
        if folder is None:
            raise FileNotFoundError(f"{model}: not an onnxruntime-genai model folder (no {GENAI_CONFIG})")
        self.folder = folder
        config_data = json.loads((folder / GENAI_CONFIG).read_text())
        self.model_path = folder / config_data["model"]["decoder"]["filename"]
        self.context_length = int(config_data["model"].get("context_length") or 0) or None
        self.allow_partial = allow_partial
        #: checks that could not be made are errors (else lines in ``unverified``)
        self.strict = strict
        self.unverified: list[str] = []
        self.signature = model_signature(self.model_path)
        self.adapters: dict[str, GenaiAdapter] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="hostkit-genai-")
        try:
            config = og.Config(str(folder))
            if threads:
                config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                    "intra_op_num_threads": int(threads), "inter_op_num_threads": 1}}}}))
            self.model = og.Model(config)
            self.tokenizer = og.Tokenizer(self.model)
            self._og_adapters = og.Adapters(self.model) if self.signature.slots else None
        except Exception as exc:  # noqa: BLE001 - genai raises RuntimeError for everything
            raise InferenceError(exc, model=str(folder), adapter=None, step=_SESSION_STEP, runtime=_RUNTIME) from exc

    # -- adapters ----------------------------------------------------------------

    def load_adapter(self, name: str, source: str | os.PathLike | Mapping[str, np.ndarray], *,
                     allow_partial: bool | None = None, metadata: Mapping[str, str] | None = None) -> GenaiAdapter:
        """Check an adapter (weights file, PEFT folder or dict of arrays) against the model, then load it.

        Raises :class:`AdapterMismatch` listing every problem before genai sees the adapter.
        """
        from hostkit_extract_adapters.weights import save_weights

        if name in self.adapters:
            raise ValueError(f"an adapter named {name!r} is already loaded (from {self.adapters[name].source})")
        if not name or name.casefold() == "none":
            raise ValueError(f"{name!r} cannot name an adapter")
        if not self.signature.slots:
            raise AdapterMismatch([f"{self.model_path} has no adapter inputs (run ExtractAdapters on the "
                                   "ModelBuilder output first)"], adapter=f"adapter {name!r}", model=str(self.folder))
        partial = self.allow_partial if allow_partial is None else allow_partial
        read = read_adapter_source(name, source, metadata, self.signature)
        weights, meta, label, model_version = read.weights, read.metadata, read.label, read.model_version
        file_path = read.path if read.format == "onnx_adapter" else None
        # fit maps contract names (a PEFT folder converted on the fly) onto the builder's, and checks
        # names, shapes, dtype and the base model: genai itself checks none of them
        arrays = self.signature.fit(weights, meta, allow_partial=partial, adapter=label, model_version=model_version,
                                     strict=self.strict, unverified=self.unverified)
        unchanged = set(arrays) == set(weights) and all(arrays[n] is weights[n] for n in arrays)
        if file_path is None or not unchanged:  # genai loads files only: write the fitted weights
            file_path = Path(self._tmp.name) / f"{len(self.adapters)}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"
            file_path = save_weights(arrays, file_path, "onnx_adapter", meta)
        try:
            self._og_adapters.load(str(file_path), name)
        except Exception as exc:  # noqa: BLE001
            raise InferenceError(exc, model=str(self.folder), adapter=name, step=f"loading {file_path}",
                                 runtime=_RUNTIME) from exc
        adapter = GenaiAdapter(name=name, source=str(source) if not isinstance(source, Mapping) else "<arrays>",
                               file=Path(file_path), metadata=dict(meta))
        self.adapters[name] = adapter
        return adapter

    def unload_adapter(self, name: str) -> None:
        self.adapters.pop(name)
        self._og_adapters.unload(name)

    # -- generation ----------------------------------------------------------------

    def encode(self, prompt: str, *, chat: bool = False, system: str | None = None) -> list[int]:
        """Token ids of ``prompt`` (wrapped in the model's chat template with ``chat``)."""
        if chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            try:
                prompt = self.tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"{self.folder}: cannot apply the chat template ({exc})") from None
        return [int(i) for i in self.tokenizer.encode(prompt)]

    def _generator(self, ids: Sequence[int], adapter: str | None, max_new_tokens: int,
                   search: Mapping[str, Any]) -> Any:
        unknown = sorted(set(search) - set(SEARCH_OPTIONS))
        if unknown:
            raise ValueError(f"unknown search option {', '.join(unknown)} (genai's: {', '.join(SEARCH_OPTIONS)})")
        if adapter is not None and adapter not in self.adapters:
            raise KeyError(f"adapter {adapter!r} is not loaded (loaded: {', '.join(self.adapters) or 'none'})")
        max_length = len(ids) + max_new_tokens
        if self.context_length and max_length > self.context_length:
            raise ValueError(f"{len(ids)} prompt tokens + {max_new_tokens} new tokens exceed the model's context "
                             f"length {self.context_length}")
        og = self._og
        try:
            params = og.GeneratorParams(self.model)
            params.set_search_options(max_length=max_length, **{"do_sample": False, **search})
            generator = og.Generator(self.model, params)
            if adapter is not None:
                generator.set_active_adapter(self._og_adapters, adapter)
        except Exception as exc:  # noqa: BLE001
            raise InferenceError(exc, model=str(self.folder), adapter=adapter, step="creating the generator",
                                 runtime=_RUNTIME) from exc
        try:
            generator.append_tokens(np.asarray(ids, dtype=np.int32))
        except Exception as exc:  # noqa: BLE001
            raise InferenceError(exc, model=str(self.folder), adapter=adapter,
                                 step=f"prefill ({len(ids)} prompt tokens)", runtime=_RUNTIME) from exc
        return generator

    def iter_ids(self, input_ids: Sequence[int], adapter: str | None = None, max_new_tokens: int = 20,
                 **search: Any) -> Iterator[int]:
        """New token ids one by one as genai produces them (stops at EOS or ``max_new_tokens``)."""
        ids = [int(i) for i in input_ids]
        generator = self._generator(ids, adapter, max_new_tokens, search)
        for index in range(max_new_tokens):
            if generator.is_done():
                return
            try:
                generator.generate_next_token()
            except Exception as exc:  # noqa: BLE001
                raise InferenceError(exc, model=str(self.folder), adapter=adapter,
                                     step=f"decoding token {index + 1} of {max_new_tokens}", runtime=_RUNTIME) from exc
            yield int(generator.get_next_tokens()[0])

    def generate_ids(self, input_ids: Sequence[int], adapter: str | None = None, max_new_tokens: int = 20,
                     **search: Any) -> list[int]:
        """The new token ids (greedy unless search options say otherwise)."""
        return list(self.iter_ids(input_ids, adapter=adapter, max_new_tokens=max_new_tokens, **search))

    def stream(self, prompt: str, adapter: str | None = None, max_new_tokens: int = 20, *, chat: bool = False,
               system: str | None = None, **search: Any) -> Iterator[str]:
        """The completion of ``prompt`` as text pieces, one per token, as they are generated."""
        ids = self.encode(prompt, chat=chat, system=system)
        decoder = self.tokenizer.create_stream()
        for token in self.iter_ids(ids, adapter=adapter, max_new_tokens=max_new_tokens, **search):
            piece = decoder.decode(token)
            if piece:
                yield piece

    def generate(self, prompt: str, adapter: str | None = None, max_new_tokens: int = 20, *, chat: bool = False,
                 system: str | None = None, **search: Any) -> str:
        """The completion of ``prompt`` with ``adapter`` (None: the base model).

        The text is what :meth:`stream` yields, joined: genai's stream decoder holds back bytes of
        an unfinished UTF-8 character, whereas ``Tokenizer.decode`` stops at the first invalid one.
        """
        return "".join(self.stream(prompt, adapter=adapter, max_new_tokens=max_new_tokens, chat=chat,
                                   system=system, **search))

    def close(self) -> None:
        self._tmp.cleanup()
