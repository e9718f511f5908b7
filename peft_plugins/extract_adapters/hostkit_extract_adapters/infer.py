"""Multi-adapter inference: one onnxruntime session, many adapters, switched per call.

>>> from hostkit_extract_adapters.infer import AdapterSession
>>> session = AdapterSession("out/02-extractadapters/model.onnx")
>>> session.load_adapter("french", "french.onnx_adapter")     # checked against the model here
>>> session.load_adapter("legal", "legal-peft-adapter/")      # a PEFT folder is converted on the fly
>>> session.generate("The capital of France is", adapter="french", max_new_tokens=8)
>>> session.run({"input_ids": ids, "attention_mask": mask}, adapter=None)   # the base model

Every adapter is checked when it is loaded (names, shapes, dtype, base model;
:meth:`ModelSignature.fit`), so a mismatch is an error with a list of what does
not fit before anything runs: onnxruntime itself fails only at run time, and
with two active adapters that share names silently uses the first.

How an adapter reaches the graph:

* models extracted with ``make_inputs = true``: one session. A ``.onnx_adapter``
  file that fits as is becomes an ``onnxruntime.LoraAdapter`` activated per call
  with ``RunOptions.add_active_adapter`` (its weights stay in onnxruntime's
  memory); other formats (or weights that had to be packed or padded) are fed
  as pre-built ``OrtValue`` inputs. Switching costs nothing beyond the feed.
* models extracted with ``make_inputs = false``: onnxruntime accepts external
  initializers only when a session is created, so each adapter gets its own
  session (created on first use, then cached); every session holds its own
  copy of the base weights.

When onnxruntime itself fails (a session it cannot create, an adapter file it
cannot load, a node that fails at run time) the error is an
:class:`InferenceError`: one line naming the model, the adapter and the step,
with onnxruntime's exception kept as ``cause`` (``hostkit --traceback infer``
prints its trace).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import attrs
import numpy as np

from hostkit.errors import PassError
from hostkit_extract_adapters.signature import AdapterMismatch, ModelSignature, read_signature, signature_from_metadata


#: the step of a failure that happened while onnxruntime created a session
SESSION_STEP = "creating the onnxruntime session"


class InferenceError(PassError):
    """onnxruntime failed on a model: which model, which adapter (None: the base model), which step.

    ``cause`` is onnxruntime's own exception; the message is one line.
    """

    def __init__(self, cause: BaseException, *, model: str, adapter: str | tuple[str, ...] | None, step: str,
                 runtime: str = "onnxruntime"):
        self.cause = cause
        self.model = model
        self.adapter = adapter
        self.step = step
        super().__init__(f"{model} with {_adapter_label(adapter)}, {step}: {runtime} failed: {_ort_message(cause)}")


def _adapter_label(adapter: str | tuple[str, ...] | None) -> str:
    if adapter is None:
        return "no adapter"
    if isinstance(adapter, str):
        return f"adapter {adapter!r}"
    return "adapters " + ", ".join(map(repr, adapter))


def _ort_message(exc: BaseException, limit: int = 600) -> str:
    """onnxruntime's message on one line, without its ``[ONNXRuntimeError] : 2 :`` prefix."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if text.startswith("[ONNXRuntimeError]"):
        parts = [p.strip() for p in text.split(" : ", 3)]
        if len(parts) == 4:  # "[ONNXRuntimeError]", code, code name, message
            text = f"{parts[2]}: {parts[3]}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_ort_error(exc: BaseException) -> bool:
    """Raised by onnxruntime (its C++ status codes arrive as ``onnxruntime.capi...`` exception types)."""
    return type(exc).__module__.startswith("onnxruntime")


@attrs.define
class LoadedAdapter:
    """An adapter checked against the model, ready to run."""

    name: str
    source: str
    arrays: dict[str, np.ndarray]          # keyed by the model's slot names
    metadata: dict[str, str]
    feed: dict[str, Any] = attrs.field(factory=dict)    # OrtValues fed with every call
    run_options: Any = None                # RunOptions with the LoraAdapter active (onnx_adapter files)
    lora_adapter: Any = None

    @property
    def slots(self) -> set[str]:
        return set(self.arrays)


@attrs.frozen
class AdapterSource:
    """An adapter as given to a session: its weights and metadata, and the file it came from."""

    weights: dict[str, Any]
    metadata: dict[str, str]
    label: str
    model_version: int | None = None
    format: str | None = None
    path: Path | None = None  #: the adapter file (None for arrays or a PEFT folder)


def read_adapter_source(name: str, source: Any, metadata: Mapping[str, str] | None, signature: Any) -> AdapterSource:
    """Read ``source`` (arrays, a PEFT adapter folder converted on the fly, or an adapter file) for adapter ``name``."""
    if isinstance(source, Mapping):
        return AdapterSource(dict(source), dict(metadata or {}), f"adapter {name!r}")
    path = Path(source)
    label = f"adapter {name!r} ({path})"
    if path.is_dir():
        from hostkit_extract_adapters.convert import convert_peft_adapter

        dtype = sorted({s.dtype for s in signature.slots.values()})[0]
        converted = convert_peft_adapter(path, dtype=dtype if dtype in ("float32", "float16") else "float32")
        return AdapterSource(converted.weights, converted.metadata, label)
    from hostkit_extract_adapters.weights import load_weights

    loaded = load_weights(path)
    return AdapterSource(loaded.weights, loaded.metadata, label, loaded.model_version, loaded.format, path)


class AdapterSession:
    """One ONNX model with many adapters; ``run``/``generate`` take the adapter to use per call.

    ``tokenizer``: a tokenizer, or its folder (default: the model's folder).
    ``session_options``: an ``onnxruntime.SessionOptions``, or a callable that
    returns a fresh one (models with external adapter initializers create one
    session per adapter, and options that carry initializers cannot be reused).
    ``allow_partial``: accept adapters that cover only some of the model's
    adapter weights (the rest run without adapter).
    """

    def __init__(self, model_path: str | os.PathLike, *, tokenizer: Any = None, providers: Sequence[str] | None = None,
                 session_options: Any = None, allow_partial: bool = False, strict: bool = False,
                 trust_remote_code: bool = False):
        import onnxruntime as ort

        self._ort = ort
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"{self.model_path}: no such ONNX model")
        self.providers = list(providers or ["CPUExecutionProvider"])
        self._session_options = session_options
        self.allow_partial = allow_partial
        #: checks that could not be made are errors (else lines in ``unverified``)
        self.strict = strict
        self.unverified: list[str] = []
        self.trust_remote_code = trust_remote_code
        self._tokenizer = tokenizer
        self.adapters: dict[str, LoadedAdapter] = {}
        self._sessions: dict[tuple[str, ...], Any] = {}
        self._session = None
        signature = None
        failure: BaseException | None = None
        try:  # a graph without external initializers opens directly; its metadata holds the signature
            self._session = self._new_session({})
        except Exception as exc:  # noqa: BLE001 - external adapter initializers: read the graph instead
            failure = exc
        if self._session is not None:
            metadata = self._session.get_modelmeta().custom_metadata_map
            signature = signature_from_metadata(metadata, source=str(self.model_path))
        self.signature: ModelSignature = signature or read_signature(self.model_path)
        if self.signature.mode == "external":
            self._session = None
        elif self._session is None and failure is not None:
            raise InferenceError(failure, model=str(self.model_path), adapter=None, step=SESSION_STEP) from failure
        self._base_feed = self._ort_values(self.signature.complete({}))

    # -- sessions ----------------------------------------------------------------

    def _options(self) -> Any:
        given = self._session_options
        if callable(given):
            return given()
        if given is not None:
            return given
        options = self._ort.SessionOptions()
        # warnings ("initializer appears in graph inputs") are the design here, and onnxruntime's own
        # error lines repeat what InferenceError says in one line
        options.log_severity_level = 4
        return options

    def _new_session(self, external: Mapping[str, np.ndarray]) -> Any:
        options = self._options()
        if external:
            names = list(external)
            values = [self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(external[n])) for n in names]
            options.add_external_initializers(names, values)
            session = self._ort.InferenceSession(str(self.model_path), options, providers=self.providers)
            session._hostkit_keepalive = values  # the session reads the buffers it was given
            return session
        return self._ort.InferenceSession(str(self.model_path), options, providers=self.providers)

    def _ort_values(self, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {n: self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for n, a in arrays.items()}

    def session_for(self, adapter: str | Sequence[str] | None = None) -> Any:
        """The onnxruntime session that serves ``adapter`` (the shared one for input-mode models)."""
        if self.signature.mode == "inputs":
            return self._session
        key = self._names(adapter)
        if key not in self._sessions:
            arrays: dict[str, np.ndarray] = {}
            for name in key:
                arrays.update(self.adapters[name].arrays)
            try:
                self._sessions[key] = self._new_session(self.signature.complete(arrays))
            except Exception as exc:
                if not _is_ort_error(exc):
                    raise
                raise InferenceError(exc, model=str(self.model_path), adapter=_one(key), step=SESSION_STEP) from exc
        return self._sessions[key]

    # -- adapters ----------------------------------------------------------------

    def load_adapter(self, name: str, source: str | os.PathLike | Mapping[str, np.ndarray], *,
                     allow_partial: bool | None = None, metadata: Mapping[str, str] | None = None) -> LoadedAdapter:
        """Load and check an adapter: a weights file, a PEFT adapter folder, or a dict of arrays.

        Raises :class:`AdapterMismatch` (listing every problem) when it does
        not fit the model, ``ValueError`` when ``name`` is taken.
        """
        if name in self.adapters:
            raise ValueError(f"an adapter named {name!r} is already loaded (from {self.adapters[name].source})")
        if not name or name.casefold() == "none":
            raise ValueError(f"{name!r} cannot name an adapter")
        partial = self.allow_partial if allow_partial is None else allow_partial
        read = read_adapter_source(name, source, metadata, self.signature)
        weights, meta, label, model_version, fmt, file_path = (read.weights, read.metadata, read.label,
                                                               read.model_version, read.format, read.path)
        arrays = self.signature.fit(weights, meta, allow_partial=partial, adapter=label, model_version=model_version,
                                     strict=self.strict, unverified=self.unverified)
        adapter = LoadedAdapter(name=name, source=str(source) if not isinstance(source, Mapping) else "<arrays>",
                                arrays=arrays, metadata=dict(meta))
        if self.signature.mode == "inputs":
            unchanged = set(arrays) == set(weights) and all(arrays[n] is weights[n] for n in arrays)
            # the public InferenceSession.run refuses a call that lacks a required input, even one
            # an active LoraAdapter would supply: adapters run through RunOptions on optional inputs only
            if fmt == "onnx_adapter" and unchanged and self.signature.optional:
                lora = self._ort.LoraAdapter()
                try:
                    lora.Load(str(file_path))
                except Exception as exc:
                    if not _is_ort_error(exc):
                        raise
                    raise InferenceError(exc, model=str(self.model_path), adapter=name,
                                         step=f"loading {file_path}") from exc
                options = self._ort.RunOptions()
                options.add_active_adapter(lora)
                adapter.lora_adapter, adapter.run_options = lora, options
            else:
                adapter.feed = self._ort_values(self.signature.complete(arrays))
        self.adapters[name] = adapter
        return adapter

    def unload_adapter(self, name: str) -> None:
        self.adapters.pop(name)
        for key in [k for k in self._sessions if name in k]:
            del self._sessions[key]

    def _names(self, adapter: str | Sequence[str] | None) -> tuple[str, ...]:
        if adapter is None:
            return ()
        names = (adapter,) if isinstance(adapter, str) else tuple(adapter)
        unknown = [n for n in names if n not in self.adapters]
        if unknown:
            raise KeyError(f"adapter {', '.join(map(repr, unknown))} is not loaded "
                           f"(loaded: {', '.join(self.adapters) or 'none'})")
        seen: dict[str, str] = {}
        for name in names:
            for slot in self.adapters[name].slots:
                if slot in seen:
                    raise AdapterMismatch([f"{slot}: set by both {seen[slot]!r} and {name!r}"],
                                          adapter=f"adapters {', '.join(names)}", model=str(self.model_path))
                seen[slot] = name
        return names

    # -- running ---------------------------------------------------------------

    def run(self, inputs: Mapping[str, Any], adapter: str | Sequence[str] | None = None,
            output_names: Sequence[str] | None = None, *, step: str = "run") -> list[np.ndarray]:
        """Run the model with ``adapter`` (a loaded name, several names with disjoint weights, or None).

        An onnxruntime failure raises :class:`InferenceError` naming ``step``.
        """
        names = self._names(adapter)
        session = self.session_for(names)
        feed = dict(inputs)
        run_options = None
        if self.signature.mode == "inputs":
            if not names:
                feed.update(self._base_feed)
            elif len(names) == 1:
                loaded = self.adapters[names[0]]
                feed.update(loaded.feed)
                run_options = loaded.run_options
            else:
                arrays: dict[str, np.ndarray] = {}
                for name in names:
                    arrays.update(self.adapters[name].arrays)
                feed.update(self._ort_values(self.signature.complete(arrays)))
        try:
            return session.run(list(output_names) if output_names else None, feed, run_options)
        except Exception as exc:
            if not _is_ort_error(exc):
                raise
            raise InferenceError(exc, model=str(self.model_path), adapter=_one(names), step=step) from exc

    # -- text generation -----------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The tokenizer given, or the one saved next to the model (transformers)."""
        if self._tokenizer is None or isinstance(self._tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            where = self._tokenizer or self.model_path.parent
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(str(where), trust_remote_code=self.trust_remote_code)
            except (OSError, ValueError) as exc:
                raise FileNotFoundError(f"no tokenizer in {where} (pass tokenizer=...): {exc}") from None
        return self._tokenizer

    def _text_inputs(self, session: Any, ids: list[int]) -> dict[str, np.ndarray]:
        feed: dict[str, np.ndarray] = {}
        n = len(ids)
        for value in session.get_inputs():
            if value.name in self.signature.slots:
                continue
            dtype = np.int32 if "int32" in value.type else np.int64
            if value.name == "input_ids":
                feed[value.name] = np.array([ids], dtype=dtype)
            elif value.name == "attention_mask":
                feed[value.name] = np.ones((1, n), dtype=dtype)
            elif value.name == "position_ids":
                feed[value.name] = np.arange(n, dtype=dtype)[None, :]
            elif value.name.startswith("past_key_values") or value.name.startswith("past."):
                # the first step (or a graph whose presents are not used): an empty past (batch 1, length 0)
                shape = [1 if i == 0 and not isinstance(d, int) else (d if isinstance(d, int) else 0)
                         for i, d in enumerate(value.shape)]
                feed[value.name] = np.zeros(shape, dtype=np.float16 if "float16" in value.type else np.float32)
            else:
                raise ValueError(f"{self.model_path}: do not know how to fill input {value.name!r} for generation")
        return feed

    @staticmethod
    def _kv_pairs(session: Any) -> dict[str, str]:
        """past input -> present output, for graphs exported with a KV cache (``present.N.key`` ...)."""
        outputs = {o.name for o in session.get_outputs()}
        pairs = {}
        for value in session.get_inputs():
            if value.name.startswith("past_key_values."):
                present = "present." + value.name[len("past_key_values."):]
                if present in outputs:
                    pairs[value.name] = present
        return pairs

    def iter_ids(self, input_ids: Iterable[int], adapter: str | Sequence[str] | None = None,
                 max_new_tokens: int = 20, eos_token_id: int | None = None, use_cache: bool = True) -> Iterator[int]:
        """Greedy decoding: the new token ids one by one, as they are produced.

        Graphs exported with a KV cache (``past_key_values.N.*`` inputs,
        ``present.N.*`` outputs) feed each step's presents back as the next
        past (``use_cache``); other graphs run the whole sequence every step.
        """
        ids = list(int(i) for i in input_ids)
        session = self.session_for(self._names(adapter))
        pairs = self._kv_pairs(session) if use_cache else {}
        outputs = ["logits", *pairs.values()]
        feed = self._text_inputs(session, ids)
        for index in range(max_new_tokens):
            step = (f"prefill ({len(ids)} prompt tokens)" if index == 0
                    else f"decoding token {index + 1} of {max_new_tokens}")
            results = self.run(feed, adapter=adapter, output_names=outputs, step=step)
            token = int(np.argmax(results[0][0, -1]))
            ids.append(token)
            yield token
            if eos_token_id is not None and token == eos_token_id:
                return
            if pairs:
                feed = self._text_inputs(session, ids)
                dtype = feed["input_ids"].dtype
                feed["input_ids"] = np.array([[token]], dtype=dtype)
                if "position_ids" in feed:
                    feed["position_ids"] = np.array([[len(ids) - 1]], dtype=feed["position_ids"].dtype)
                for (past, _), value in zip(pairs.items(), results[1:]):
                    feed[past] = value
            else:
                feed = self._text_inputs(session, ids)

    def generate_ids(self, input_ids: Iterable[int], adapter: str | Sequence[str] | None = None,
                     max_new_tokens: int = 20, eos_token_id: int | None = None, use_cache: bool = True) -> list[int]:
        """Greedy decoding; returns the new token ids (see :meth:`iter_ids`)."""
        return list(self.iter_ids(input_ids, adapter=adapter, max_new_tokens=max_new_tokens,
                                  eos_token_id=eos_token_id, use_cache=use_cache))

    def encode(self, prompt: str, *, chat: bool = False, system: str | None = None) -> list[int]:
        """Token ids of ``prompt``; with ``chat``, wrapped in the tokenizer's chat template as a user turn."""
        tokenizer = self.tokenizer
        if not chat:
            return list(tokenizer(prompt)["input_ids"])
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{self.model_path}: the tokenizer has no chat template (drop --chat)")
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def stream(self, prompt: str, adapter: str | Sequence[str] | None = None, max_new_tokens: int = 20, *,
               chat: bool = False, system: str | None = None) -> Iterator[str]:
        """The greedy completion of ``prompt`` as text pieces, as the tokens are generated.

        Each piece is the growth of the decoded text; a token that ends inside a UTF-8 character
        yields nothing until the character is complete.
        """
        tokenizer = self.tokenizer
        ids = self.encode(prompt, chat=chat, system=system)
        new: list[int] = []
        shown = ""
        for token in self.iter_ids(ids, adapter=adapter, max_new_tokens=max_new_tokens,
                                   eos_token_id=tokenizer.eos_token_id):
            new.append(token)
            text = tokenizer.decode(new, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # an unfinished character: wait for its next byte
                continue
            if text.startswith(shown) and len(text) > len(shown):
                yield text[len(shown):]
                shown = text
        text = tokenizer.decode(new, skip_special_tokens=True)
        if text.startswith(shown) and len(text) > len(shown):
            yield text[len(shown):]

    def generate(self, prompt: str, adapter: str | Sequence[str] | None = None, max_new_tokens: int = 20, *,
                 chat: bool = False, system: str | None = None) -> str:
        """Greedy completion of ``prompt`` with ``adapter`` (None: the base model)."""
        tokenizer = self.tokenizer
        ids = self.encode(prompt, chat=chat, system=system)
        new = self.generate_ids(ids, adapter=adapter, max_new_tokens=max_new_tokens,
                                eos_token_id=tokenizer.eos_token_id)
        return tokenizer.decode(new, skip_special_tokens=True)


def open_session(model: str | os.PathLike, **options: Any) -> Any:
    """The session that serves ``model``: :class:`~hostkit_extract_adapters.genai.GenaiSession` for an
    onnxruntime-genai folder (``genai_config.json``, or its decoder file), else :class:`AdapterSession`.

    ``options`` go to the session (``threads`` is genai's intra-op thread count; for plain
    onnxruntime it sets ``SessionOptions.intra_op_num_threads``).
    """
    from hostkit_extract_adapters.genai import GenaiSession, genai_folder

    if genai_folder(model) is not None:
        options.pop("tokenizer", None)
        return GenaiSession(model, **options)
    threads = options.pop("threads", None)
    if threads:
        import onnxruntime as ort

        def session_options() -> Any:
            opts = ort.SessionOptions()
            opts.log_severity_level = 4
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
            return opts

        options["session_options"] = session_options
    return AdapterSession(model, **options)


def _one(names: tuple[str, ...]) -> str | tuple[str, ...] | None:
    """How an error names the adapters of a call: None, one name, or the names."""
    if not names:
        return None
    return names[0] if len(names) == 1 else names
