"""OnnxConversion: an ``HfModel`` handle to an ONNX graph (``input_ids, attention_mask[, position_ids] -> logits``).

The model is loaded through :mod:`hostkit_merge_adapters.loading` (so a 4-bit
base is dequantized exactly as MergeAdapterWeights does). A LoRA adapter is
either merged (``merge_adapter_weights = true``) or kept apart: its layers are
replaced by :class:`~hostkit_onnx_export.lora_modules.ContractLoraLinear`, so
the graph holds each adapter weight as an initializer named and shaped by the
adapter contract, ready for ExtractAdapters.

Exporters (measured on the 2-layer tiny Llama, 2 shared CPU cores, see README):
``dynamo`` (``torch.onnx.export(dynamo=True)``) is the maintained path; with
contract-layout LoRA modules its optimizer keeps the adapter names.
``torchscript`` (``dynamo=False``, deprecated by torch) is about ten times
faster on small models; it runs with ``do_constant_folding=False`` so that no
weight is ever folded into an anonymous constant.
"""

from __future__ import annotations

import inspect
import json
import time
import types
from pathlib import Path
from typing import Any

import torch

from hostkit import OnnxModel, PassError
from hostkit_adapters import contract as adapter_contract

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
_TWO_GB = 2 * 1024**3 - 64 * 1024**2  # protobuf's limit, with a margin for the graph itself


def export_onnx(handle: Any, config: Any, output_dir: Path, context: Any = None) -> OnnxModel:
    """Export ``handle`` into ``output_dir/model.onnx``; return the :class:`OnnxModel` handle."""
    from hostkit_merge_adapters.loading import load_base, load_with_adapter, save_tokenizer

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if config.with_past and handle.task != "text-generation":
        raise PassError(f"with_past = true needs a text-generation model, not {handle.task}")
    if context is not None and not context.is_main_process:
        return _handle_without_export(handle, config, output_dir)
    _progress(context, "loading model")
    adapter_config = None
    adapter_names: list[str] = []
    if handle.adapter_path:
        adapter_config = _read_adapter_config(Path(handle.adapter_path))
        reason = None if config.merge_adapter_weights else adapter_contract.unsupported_reason(adapter_config)
        if reason:
            raise PassError(f"the adapter cannot be kept apart in ONNX: {reason} "
                            "(or set merge_adapter_weights = true)")
        peft_model, facts = load_with_adapter(handle, dtype="float32")
        if config.merge_adapter_weights:
            model = peft_model.merge_and_unload(safe_merge=True)
            adapter_config = None
        else:
            from hostkit_onnx_export.lora_modules import replace_lora_layers

            model, adapter_names = replace_lora_layers(peft_model, adapter_config)
    else:
        model, facts = load_base(handle, dtype="float32")
    model = model.to(_dtype(config.torch_dtype)).eval()
    for param in model.parameters():
        param.requires_grad_(False)

    io = _io_spec(model, handle, config)
    _patch_forward(model, io)
    sample = _sample_inputs(model, io)
    path = output_dir / MODEL_FILE
    _progress(context, f"exporting with the {config.exporter} exporter")
    start = time.perf_counter()
    with torch.no_grad():
        if config.exporter == "dynamo":
            _export_dynamo(model, sample, io, config, path)
        else:
            _export_torchscript(model, sample, io, config, path)
    export_s = round(time.perf_counter() - start, 3)

    base_identity = adapter_contract.base_model_identity(handle.path)
    metadata = {
        "hostkit.producer": adapter_contract.producer(),
        "hostkit.base_model": base_identity,
        "hostkit.task": handle.task,
        "hostkit.exporter": config.exporter,
        "hostkit.inputs": json.dumps(io["inputs"]),
        "hostkit.outputs": json.dumps(io["outputs"]),
        "hostkit.dequantized": "true" if facts.get("dequantized") else "false",
    }
    if adapter_config is not None:
        metadata.update(adapter_contract.adapter_metadata(
            adapter_config, base_model=base_identity, dtype=config.torch_dtype,
            target_modules=sorted({adapter_contract.module_path(n).rsplit(".", 1)[-1] for n in adapter_names})))
    _finalize(path, metadata, adapter_names, config)

    tokenizer_saved = save_tokenizer(handle, output_dir)
    genai_written = False
    if config.with_past and tokenizer_saved:  # onnxruntime-genai loads KV-cache graphs (it needs the tokenizer)
        from hostkit_onnx_export.genai import write_genai_config

        write_genai_config(output_dir, model, io, MODEL_FILE)
        genai_written = True
    notes = {**facts, "exporter": config.exporter, "export_s": export_s, "opset": config.target_opset,
             "inputs": io["inputs"], "outputs": io["outputs"], "adapter_weights": len(adapter_names),
             "genai_config": genai_written}
    if config.check_outputs:
        _progress(context, "checking onnxruntime against torch")
        delta, scale = check_against_torch(model, path, io)
        # a real model's logits reach tens, where fp32 kernels differ by ~1e-5 relative: judge
        # the difference relative to the logits' scale (absolute below 1, e.g. the tiny test model)
        relative = delta / max(1.0, scale)
        tolerance = config.check_tolerance * (100 if config.torch_dtype == "float16" else 1)
        notes["max_abs_logit_delta"] = delta
        notes["max_rel_logit_delta"] = relative
        if context is not None:
            context.report_metric("max_abs_logit_delta", delta)
            context.report_metric("max_rel_logit_delta", relative)
        if not relative <= tolerance:
            raise PassError(f"onnxruntime's logits differ from torch's by {delta:.3g} "
                            f"({relative:.3g} of the largest logit {scale:.3g}; tolerance {tolerance:g})")
    if context is not None:
        context.note(**notes)
    return OnnxModel(
        path=str(path),
        adapter_mode="embedded" if adapter_names else None,
        adapter_names=adapter_names,
        base_model=base_identity,
        task=handle.task,
        tokenizer_path=str(output_dir) if tokenizer_saved else handle.tokenizer_path,
    )


def _handle_without_export(handle: Any, config: Any, output_dir: Path) -> OnnxModel:
    """The handle rank 0 returns, computed without the export (under torchrun only rank 0 writes)."""
    from hostkit_merge_adapters.loading import tokenizer_source

    names: list[str] = []
    if handle.adapter_path and not config.merge_adapter_weights:
        from safetensors import safe_open

        with safe_open(str(Path(handle.adapter_path) / "adapter_model.safetensors"), "np") as weights:
            names = [adapter_contract.contract_name(key) for key in weights.keys()]
    return OnnxModel(path=str(output_dir / MODEL_FILE), adapter_mode="embedded" if names else None,
                     adapter_names=names, base_model=adapter_contract.base_model_identity(handle.path),
                     task=handle.task,
                     tokenizer_path=str(output_dir) if tokenizer_source(handle) else handle.tokenizer_path)


# -- inputs, outputs, forward ------------------------------------------------------


def _io_spec(model: Any, handle: Any, config: Any) -> dict[str, Any]:
    params = inspect.signature(type(model).forward).parameters
    inputs = ["input_ids", "attention_mask"]
    if config.use_position_ids and "position_ids" in params and handle.task == "text-generation":
        inputs.append("position_ids")
    spec: dict[str, Any] = {"inputs": inputs, "outputs": ["logits"], "layers": 0, "with_past": config.with_past}
    if config.with_past:
        if "position_ids" not in inputs:
            raise PassError("with_past = true needs use_position_ids = true and a model whose forward takes position_ids")
        text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        layers = text_config.num_hidden_layers
        spec["layers"] = layers
        spec["kv_heads"] = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
        spec["head_dim"] = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        spec["inputs"] = inputs + [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        spec["outputs"] = ["logits"] + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return spec


def _patch_forward(model: Any, io: dict[str, Any]) -> None:
    """Give ``model`` (this instance only) a forward with plain tensor inputs and outputs.

    Patching the instance instead of wrapping it keeps the parameters' qualified
    names (a wrapper would prefix them all), so the graph's initializers carry
    the model's own names and the contract names of the adapter.
    """
    forward = type(model).forward
    if not io["with_past"]:
        def plain(self: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  position_ids: torch.Tensor | None = None) -> torch.Tensor:
            kwargs = {"position_ids": position_ids} if position_ids is not None else {}
            return forward(self, input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits

        model.forward = types.MethodType(plain, model)
        return

    layers = io["layers"]

    def with_past(self: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                  *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.config)
        for i in range(layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = forward(self, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      past_key_values=cache, use_cache=True)
        present = []
        for i in range(layers):
            key, value = _layer_kv(out.past_key_values, i)
            present += [key, value]
        return (out.logits, *present)

    model.forward = types.MethodType(with_past, model)


def _layer_kv(cache: Any, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(cache, "layers"):
        layer = cache.layers[index]
        return layer.keys, layer.values
    return cache.key_cache[index], cache.value_cache[index]


def _sample_inputs(model: Any, io: dict[str, Any], batch: int = 2, seq: int = 8, past: int = 3,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Example inputs: ``batch`` sequences of ``seq`` new tokens (the last one right-padded), ``past`` cached."""
    vocab = model.config.get_text_config().vocab_size if hasattr(model.config, "get_text_config") else model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    total = seq + (past if io["with_past"] else 0)
    input_ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    attention_mask = torch.ones(batch, total, dtype=torch.int64)
    attention_mask[-1, total - 2:] = 0
    tensors: list[torch.Tensor] = [input_ids, attention_mask]
    if "position_ids" in io["inputs"]:
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        tensors.append(positions[:, -seq:])
    if io["with_past"]:
        dtype = next(model.parameters()).dtype
        for _ in range(io["layers"]):
            for _kv in ("key", "value"):
                tensors.append(torch.randn(batch, io["kv_heads"], past, io["head_dim"], generator=gen).to(dtype))
    return tuple(tensors)


def _dynamic_axes(io: dict[str, Any]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for name in io["inputs"]:
        if name.startswith("past_key_values."):
            axes[name] = {0: "batch", 2: "past_sequence"}
        elif name == "attention_mask" and io["with_past"]:
            axes[name] = {0: "batch", 1: "total_sequence"}
        else:
            axes[name] = {0: "batch", 1: "sequence"}
    for name in io["outputs"]:
        axes[name] = {0: "batch", 2: "total_sequence"} if name.startswith("present.") else {0: "batch", 1: "sequence"}
    return axes


# -- exporters ---------------------------------------------------------------------


def _export_dynamo(model: Any, sample: tuple, io: dict[str, Any], config: Any, path: Path) -> None:
    axes = _dynamic_axes(io)
    # keyed by the patched forward's parameter names; the cache tensors arrive as one *past tuple
    dynamic_shapes: dict[str, Any] = {name: axes[name] for name in io["inputs"] if not name.startswith("past_")}
    if io["with_past"]:
        dynamic_shapes["past"] = tuple(axes[name] for name in io["inputs"] if name.startswith("past_"))
    try:
        program = torch.onnx.export(model, sample, dynamo=True, optimize=config.optimize, verbose=False,
                                    opset_version=config.target_opset, input_names=io["inputs"],
                                    output_names=io["outputs"], dynamic_shapes=dynamic_shapes)
    except Exception as exc:  # noqa: BLE001 - the exporter's own errors are long; keep the gist
        raise PassError(f"torch.onnx.export(dynamo=True) failed: {type(exc).__name__}: {str(exc)[:600]} "
                        "(try exporter = \"torchscript\")") from exc
    program.save(str(path), external_data=False)


def _export_torchscript(model: Any, sample: tuple, io: dict[str, Any], config: Any, path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's TracerWarnings and its own deprecation notice
        torch.onnx.export(model, sample, str(path), dynamo=False, do_constant_folding=False,
                          opset_version=min(config.target_opset, 20), input_names=io["inputs"],
                          output_names=io["outputs"], dynamic_axes=_dynamic_axes(io))


def _finalize(path: Path, metadata: dict[str, str], adapter_names: list[str], config: Any) -> None:
    """Check the adapter names, write the metadata, and choose inline or external weights."""
    import onnx

    model = onnx.load(str(path))
    initializers = {init.name: init for init in model.graph.initializer}
    missing = [name for name in adapter_names if name not in initializers]
    if missing:
        raise RuntimeError(f"the exported graph lost adapter weights (the contract needs them as named "
                           f"initializers): {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    for name in adapter_names:
        dims = list(initializers[name].dims)
        if len(dims) != 2:
            raise RuntimeError(f"adapter weight {name} has shape {dims}, expected 2-D")
    existing = {p.key: p for p in model.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = value
        else:
            model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    size = sum(_tensor_bytes(init) for init in model.graph.initializer)
    external = config.save_as_external_data or size > _TWO_GB
    for stale in path.parent.glob(path.name + "*.data"):
        stale.unlink()
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=DATA_FILE, size_threshold=1024)


def _tensor_bytes(tensor: Any) -> int:
    import numpy as np
    import onnx

    count = int(np.prod(tensor.dims)) if len(tensor.dims) else 1
    return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


# -- checks ------------------------------------------------------------------------


def check_against_torch(model: Any, path: Path, io: dict[str, Any]) -> tuple[float, float]:
    """(max |logits_ort - logits_torch|, max |logits_torch|) over unmasked positions of padded sample batches."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise PassError("check_outputs = true needs onnxruntime: pip install onnxruntime") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = scale = 0.0
    for batch, seq, seed in ((2, 8, 1), (3, 5, 2)):
        sample = _sample_inputs(model, io, batch=batch, seq=seq, seed=seed)
        with torch.no_grad():
            expected = model(*sample)
        expected_logits = (expected[0] if isinstance(expected, tuple) else expected).float().numpy()
        got = session.run(["logits"], {n: t.numpy() for n, t in zip(io["inputs"], sample)})[0].astype("float32")
        mask = sample[1][:, -seq:].numpy().astype(bool)
        worst = max(worst, float(abs(got - expected_logits)[mask].max()))
        scale = max(scale, float(abs(expected_logits)[mask].max()))
    return worst, scale


def _read_adapter_config(adapter: Path) -> dict[str, Any]:
    try:
        return json.loads((adapter / "adapter_config.json").read_text())
    except FileNotFoundError:
        raise PassError(f"{adapter} is not a PEFT adapter folder (no adapter_config.json)") from None


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16}[name]


def _progress(context: Any, message: str) -> None:
    if context is not None:
        context.progress(message)
