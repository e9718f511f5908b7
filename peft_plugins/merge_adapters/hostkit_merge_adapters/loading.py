"""Load an ``HfModel`` handle into torch: the base (dequantized when it is 4-bit), and its adapter.

Heavy module (torch, transformers, peft; bitsandbytes for a quantized base):
import it only inside a running pass. OnnxConversion loads its input through
here too, so a QLoRA output is exported over the same dequantized base that
MergeAdapterWeights merges into.

Why dequantize: a QLoRA adapter was trained against ``dequantize(quantize(W))``,
not against ``W``. Merging it into the original ``W`` (what Olive does: it
drops the quantization config) or into a re-quantized ``W + BA`` changes the
model; merging it into the dequantized weights reproduces the PEFT model over
the 4-bit base exactly (up to float rounding of the matmul order).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from hostkit import PassError
from hostkit_merge_adapters.files import check_adapter_folder, check_model_folder, read_adapter_config

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

#: load_kwargs keys the loader sets itself
_OWN_KWARGS = ("dtype", "torch_dtype", "quantization_config", "device_map", "load_in_4bit", "load_in_8bit")

#: files of a processor (images, audio, video) copied next to a merged model when the base has them
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
                   "feature_extractor_config.json", "chat_template.json", "chat_template.jinja")


def torch_dtype(name: str | None, default: str = "float32") -> torch.dtype:
    return DTYPES[name if name and name != "auto" else default]


def model_class(task: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task == "text-classification":
        return AutoModelForSequenceClassification
    return AutoModelForCausalLM


def from_pretrained_kwargs(handle: Any, dtype: torch.dtype) -> dict[str, Any]:
    """The keyword arguments of every base ``from_pretrained`` here; ``trust_remote_code`` is the handle's."""
    if "trust_remote_code" in (handle.load_kwargs or {}):
        raise PassError("model.load_kwargs: trust_remote_code may not be set here: model code runs only with "
                        "trust_remote_code = true in [model] itself")
    kwargs = {k: v for k, v in dict(handle.load_kwargs or {}).items() if k not in _OWN_KWARGS}
    kwargs["dtype"] = dtype
    kwargs["trust_remote_code"] = handle.trust_remote_code
    if handle.task == "text-classification" and handle.num_labels:
        kwargs["num_labels"] = handle.num_labels
    return kwargs


def quantization_config(handle: Any) -> Any:
    """The ``BitsAndBytesConfig`` the handle's base is loaded with, or None for a float base."""
    quant = dict(handle.quantization or {})
    if not (quant.get("load_in_4bit") or quant.get("load_in_8bit")):
        return None
    from transformers import BitsAndBytesConfig

    quant.pop("quant_method", None)
    return BitsAndBytesConfig(**quant)


def load_quantized_base(handle: Any, *, exact_forward: bool = True) -> Any:
    """The base loaded the way the handle says (4-bit or 8-bit through bitsandbytes), on CPU.

    ``exact_forward`` (the default) keeps every 4-bit layer on the dequantize-then-matmul path
    (:func:`exact_4bit_forward`), so the model computes what QLoRA trained against on any CPU;
    ``False`` leaves bitsandbytes' choice of kernel for this machine (see :func:`quantized_kernel_deviation`).
    """
    config = quantization_config(handle)
    if config is None:
        raise PassError(f"the model at {handle.path} has no bitsandbytes quantization settings")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise PassError("the base is quantized with bitsandbytes (a QLoRA output), which is not installed: "
                        "pip install 'bitsandbytes>=0.50'") from None
    # non-quantized modules (embeddings, norms, lm_head) in the handle's dtype, as during training
    dtype = torch_dtype(handle.torch_dtype)
    kwargs = from_pretrained_kwargs(handle, dtype)
    device_map = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = model_class(handle.task).from_pretrained(handle.path, quantization_config=config,
                                                     device_map=device_map, **kwargs)
    if exact_forward:
        exact_4bit_forward(model)
    return model


def exact_4bit_forward(model: Any) -> int:
    """Keep every bitsandbytes 4-bit layer of ``model`` computing ``x @ dequantize_4bit(W).T``.

    On a CPU with AVX512-BF16, bitsandbytes (>= 0.49) repacks a ``Linear4bit`` weight at its
    first inference-mode forward (eval, no grad) and from then on computes it with a fused bf16
    kernel: input and block scales cast to bfloat16, about 1e-3 of the logits' scale away from the
    dequantized float product, and the layer stays packed for later training forwards too. On
    other CPUs (AVX2) and in training mode every forward dequantizes the weight and multiplies in
    the compute dtype. Turning the repacking off (and undoing it where it already happened) makes
    the 4-bit model compute the same thing on every CPU, in training and in evaluation, which is
    what a merge over the dequantized weights reproduces. Call it before the first forward: the
    repacking stores the block scales in bfloat16, so undoing it gives back weights within bf16
    rounding of the original, not the original. Returns the number of layers changed.
    """
    import bitsandbytes as bnb

    changed = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        _unpack_cpu_4bit(module)
        if getattr(module, "support_avx512bf16_for_cpu", False):
            changed += 1
        module.support_avx512bf16_for_cpu = False
    return changed


def _unpack_cpu_4bit(module: Any) -> None:
    """Undo bitsandbytes' CPU repacking of a Linear4bit weight (a no-op when it is not packed)."""
    state = getattr(module.weight, "quant_state", None)
    if state is not None and getattr(state, "packing_format_for_cpu", False):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
            module.weight.data, state)


def default_quantized_kernel(quantized: Any) -> str:
    """Which forward bitsandbytes picks for the quantized layers of ``quantized`` in inference mode here."""
    import bitsandbytes as bnb

    layers = [m for m in quantized.modules() if isinstance(m, bnb.nn.Linear4bit)]
    if not layers:
        return "LLM.int8 (int8 activations)"
    compute = str(layers[0].compute_dtype or torch.float32).removeprefix("torch.")
    if torch.cuda.is_available():
        return f"cuda 4-bit, {compute} compute"
    from bitsandbytes.functional import has_avx512bf16

    if has_avx512bf16():
        return "cpu 4-bit repacked, bfloat16 compute (avx512_bf16)"
    return f"cpu 4-bit dequantize + matmul, {compute} compute"


@torch.no_grad()
def quantized_kernel_deviation(quantized: Any, reference: Any) -> dict[str, Any]:
    """How far this machine's quantized forward is from the dequantized float model.

    Runs a fixed probe batch through ``quantized`` (loaded with ``exact_forward=False``, so
    bitsandbytes uses the kernel it picks here) and through ``reference`` (float weights =
    the dequantized ones); the figure is max |delta logits| absolute and relative to the
    reference logits' largest magnitude. It changes nothing that is saved: it says how much
    an evaluation with the machine's own 4-bit kernel can differ from the exported model.
    """
    vocab = int(reference.get_input_embeddings().weight.shape[0])
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    device = next(quantized.parameters()).device
    quantized.eval()
    got = quantized(input_ids=ids.to(device)).logits.float().cpu()
    expected = reference.eval()(input_ids=ids).logits.float()
    max_abs = (got - expected).abs().max().item()
    scale = expected.abs().max().item() or 1.0
    return {"kernel": default_quantized_kernel(quantized), "max_abs": max_abs, "relative": max_abs / scale}


def dequantize_linear_weights(quantized: Any) -> dict[str, torch.Tensor]:
    """Module name -> float32 weight for every bitsandbytes Linear of ``quantized``.

    4-bit weights go through ``bitsandbytes.functional.dequantize_4bit`` (the
    exact inverse of the 4-bit storage, nf4 or fp4, with or without double
    quantization); 8-bit weights are ``CB * SCB / 127`` (LLM.int8 row-wise).
    """
    import bitsandbytes as bnb

    weights = {}
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            _unpack_cpu_4bit(module)
            w = module.weight
            weights[name] = bnb.functional.dequantize_4bit(w.data, w.quant_state).to(torch.float32).cpu()
        elif isinstance(module, bnb.nn.Linear8bitLt):
            w = module.weight
            scb = getattr(w, "SCB", None)
            if scb is None:
                scb = module.state.SCB
            weights[name] = (w.data.to(torch.float32) * scb.to(torch.float32)[:, None] / 127.0).cpu()
    return weights


def load_base(handle: Any, *, dtype: str = "float32") -> tuple[Any, dict[str, Any]]:
    """The handle's base model in float ``dtype``, plus facts for the manifest.

    A float base is loaded as is. A bitsandbytes base (``handle.quantization``)
    is loaded twice: once quantized as the handle says, to read its quantized
    linear weights back through dequantization, and once in float, whose
    linear weights are then replaced by the dequantized ones. Every other
    parameter (embeddings, norms, lm_head) keeps the base's own values.
    """
    check_model_folder(handle.path)
    target = torch_dtype(dtype)
    load_dtype = torch.float32 if quantization_config(handle) is not None else target
    model = model_class(handle.task).from_pretrained(handle.path, **from_pretrained_kwargs(handle, load_dtype))
    facts: dict[str, Any] = {"dequantized": False}
    if quantization_config(handle) is not None:
        quantized = load_quantized_base(handle, exact_forward=False)
        weights = dequantize_linear_weights(quantized)
        if not weights:
            raise PassError(f"the base at {handle.path} was loaded with {handle.quantization} "
                            "but no bitsandbytes linear layer was found")
        with torch.no_grad():
            for name, weight in weights.items():
                module = model.get_submodule(name)
                if tuple(module.weight.shape) != tuple(weight.shape):
                    raise PassError(f"dequantized {name}.weight has shape {tuple(weight.shape)}, "
                                    f"the float base has {tuple(module.weight.shape)}")
                module.weight.copy_(weight)
        deviation = quantized_kernel_deviation(quantized, model)
        del quantized
        facts = {"dequantized": True, "dequantized_modules": len(weights),
                 "quantization": {k: v for k, v in dict(handle.quantization).items()},
                 "quantized_kernel_deviation": deviation}
        model = model.to(target)
    model.eval()
    return model, facts


def load_with_adapter(handle: Any, *, dtype: str = "float32") -> tuple[Any, dict[str, Any]]:
    """A ``peft.PeftModel`` (adapter name ``default``) over :func:`load_base`'s model."""
    if not handle.adapter_path:
        raise PassError(f"the model at {handle.path} has no adapter_path: there is no adapter to load")
    adapter = Path(handle.adapter_path)
    read_adapter_config(adapter)
    check_adapter_folder(adapter)
    from peft import PeftModel

    base, facts = load_base(handle, dtype=dtype)
    model = PeftModel.from_pretrained(base, str(adapter), adapter_name="default", is_trainable=False)
    model.eval()
    return model, facts


def tokenizer_source(handle: Any) -> str | None:
    """Where the handle's tokenizer lives: tokenizer_path, else the adapter folder if it has one, else the base."""
    candidates = [handle.tokenizer_path, handle.adapter_path, handle.path]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir() and any(
                (Path(candidate) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            return str(candidate)
    return handle.tokenizer_path or (handle.path if not Path(handle.path).exists() else None)


def save_tokenizer(handle: Any, output_dir: Path) -> bool:
    """Save the handle's tokenizer into ``output_dir``; False when the model has none."""
    source = tokenizer_source(handle)
    if source is None:
        return False
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=handle.trust_remote_code)
    except (OSError, ValueError):
        return False
    tokenizer.save_pretrained(output_dir)
    return True


def copy_processor_files(handle: Any, output_dir: Path) -> list[str]:
    """Copy processor files of the base (images, audio, chat template) that the output lacks."""
    copied = []
    base = Path(handle.path)
    if not base.is_dir():
        return copied
    for name in PROCESSOR_FILES:
        if (base / name).is_file() and not (output_dir / name).exists():
            shutil.copy2(base / name, output_dir / name)
            copied.append(name)
    return copied
