"""Load a model handle into torch and compare what two handles compute, for plugin tests.

Every adapter-producing plugin needs the same two checks: the adapter it wrote
loads in peft over its base (:func:`load_handle`), and it changes (or keeps) the
model's outputs as intended (:func:`compare_logits` on a fixed batch). Imports
torch, transformers and peft when called, never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

#: the fixed batch: short texts in the tiny tokenizer's vocabulary (any tokenizer handles them)
FIXED_TEXTS = ("The capital of France is Paris.", "### Q: what is the country code of italy? ### A: IT")


def load_handle(handle: Any, *, dtype: str | None = "float32") -> Any:
    """A torch module in eval mode for an :class:`hostkit.HfModel` handle.

    The base from ``handle.path`` (``AutoModelForSequenceClassification`` for
    ``task = "text-classification"``, else ``AutoModelForCausalLM``), loaded with
    the handle's ``load_kwargs``, ``quantization`` and ``trust_remote_code``; with
    ``handle.adapter_path`` set, a ``peft.PeftModel`` over it. ``dtype`` overrides
    the handle's ``torch_dtype`` (default float32, so that comparisons are exact
    enough on any CPU); ``None`` keeps the handle's.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if type(handle).__name__ != "HfModel":
        raise TypeError(f"load_handle takes an HfModel handle, got {type(handle).__name__}")
    kwargs: dict[str, Any] = dict(handle.load_kwargs or {}, trust_remote_code=handle.trust_remote_code)
    chosen = dtype if dtype is not None else handle.torch_dtype
    if chosen:
        kwargs["dtype"] = getattr(torch, chosen)
    if handle.num_labels:
        kwargs["num_labels"] = handle.num_labels
    if handle.quantization:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(**handle.quantization)
    auto = AutoModelForSequenceClassification if handle.task == "text-classification" else AutoModelForCausalLM
    model = auto.from_pretrained(handle.path, **kwargs)
    if handle.adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, handle.adapter_path)
    return model.eval()


def fixed_batch(handle: Any, texts: tuple[str, ...] = FIXED_TEXTS) -> dict[str, Any]:
    """``texts`` tokenized by the handle's tokenizer (``tokenizer_path``, else the adapter's, else the base's),
    padded on the right: a dict of ``input_ids`` and ``attention_mask`` tensors."""
    from transformers import AutoTokenizer

    source = handle.tokenizer_path or _adapter_tokenizer(handle) or handle.path
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=handle.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    return dict(tokenizer(list(texts), return_tensors="pt", padding=True))


def _adapter_tokenizer(handle: Any) -> str | None:
    if handle.adapter_path and (Path(handle.adapter_path) / "tokenizer_config.json").is_file():
        return handle.adapter_path
    return None


def logits(model_or_handle: Any, batch: dict[str, Any] | None = None) -> Any:
    """The float32 logits of a handle (loaded with :func:`load_handle`) or of a loaded module on ``batch``
    (default: :func:`fixed_batch` of the handle), with padded positions set to 0."""
    import torch

    handle = None if isinstance(model_or_handle, torch.nn.Module) else model_or_handle
    model = load_handle(handle) if handle is not None else model_or_handle
    if batch is None:
        if handle is None:
            raise ValueError("logits(model) needs a batch: pass batch=fixed_batch(handle)")
        batch = fixed_batch(handle)
    with torch.no_grad():
        out = model(**batch).logits.float()
    if out.dim() == 3:  # causal LM: [batch, positions, vocab]; padded positions are not compared
        out = out * batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    return out


@attrs.frozen
class LogitsComparison:
    """How far two models' logits on one batch are apart: ``max_abs_diff``, relative to ``scale``
    (the larger of the two max |logit|), as ``relative``."""

    max_abs_diff: float
    scale: float

    @property
    def relative(self) -> float:
        return self.max_abs_diff / self.scale if self.scale else self.max_abs_diff

    def same(self, rtol: float = 1e-4) -> bool:
        """Equal within ``rtol`` of the logits' scale."""
        return self.relative <= rtol


def compare_logits(a: Any, b: Any, batch: dict[str, Any] | None = None) -> LogitsComparison:
    """Compare the logits of ``a`` and ``b`` (handles or loaded modules) on one fixed batch.

    ``batch`` defaults to :func:`fixed_batch` of the first handle given, so both
    see exactly the same token ids.
    """
    import torch

    if batch is None:
        handle = next((x for x in (a, b) if not isinstance(x, torch.nn.Module)), None)
        if handle is None:
            raise ValueError("compare_logits of two modules needs a batch: pass batch=fixed_batch(handle)")
        batch = fixed_batch(handle)
    first, second = logits(a, batch), logits(b, batch)
    if first.shape != second.shape:
        raise ValueError(f"the logits differ in shape: {tuple(first.shape)} and {tuple(second.shape)}")
    scale = max(first.abs().max().item(), second.abs().max().item())
    return LogitsComparison(max_abs_diff=(first - second).abs().max().item(), scale=scale)


def check_adapter_loads(handle: Any) -> str | None:
    """``None`` when ``handle.adapter_path`` holds a PEFT adapter that loads over ``handle.path`` and runs on
    the fixed batch; otherwise one line saying what failed. For a handle without an adapter: ``None``."""
    if not getattr(handle, "adapter_path", None):
        return None
    folder = Path(handle.adapter_path)
    if not (folder / "adapter_config.json").is_file():
        return f"adapter_path {folder}: no adapter_config.json (not a PEFT adapter folder)"
    try:
        model = load_handle(handle)
        logits(model, fixed_batch(handle))
    except Exception as exc:  # noqa: BLE001 - the conformance suite reports it as one line
        return f"adapter_path {folder}: does not load in peft over {handle.path}: {type(exc).__name__}: {exc}"
    return None
