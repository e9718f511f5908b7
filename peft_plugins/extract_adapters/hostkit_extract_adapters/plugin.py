"""Entry-point target of hostkit-extract-adapters: hookimpls only, no heavy imports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hostkit import OnnxModel, PassError, PassSpec, Requirements, hookimpl
from hostkit_extract_adapters.commands import command_specs
from hostkit_extract_adapters.config import ExtractAdaptersConfig

PASS_TYPE = "ExtractAdapters"


@hookimpl
def hostkit_register(register: Any) -> None:
    register.pass_type(PassSpec(
        name=PASS_TYPE, config_cls=ExtractAdaptersConfig, run=run_extract,
        summary="take the LoRA weights out of an ONNX model so one model serves many adapters",
        requires=Requirements(modules={"onnx": "onnx>=1.16", "onnxruntime": "onnxruntime>=1.20",
                                       "numpy": "numpy>=1.24", "safetensors": "safetensors>=0.4"}),
        input_types=("OnnxModel",), output_type="OnnxModel",
    ))
    for spec in command_specs():
        register.command(spec)


def run_extract(config: ExtractAdaptersConfig, model: Any, context: Any) -> Any:
    if not isinstance(model, OnnxModel):
        raise PassError(f"takes an OnnxModel, got {type(model).__name__} (export it with OnnxConversion first)")
    if model.adapter_mode in ("inputs", "external"):
        raise PassError(f"{model.path}: its adapters were already extracted (adapter_mode = {model.adapter_mode!r})")
    from hostkit_extract_adapters.extract import ExtractError, extract_adapters

    tokenizer_dir = model.tokenizer_path or str(Path(model.path).parent)
    try:
        result = extract_adapters(
            model.path, context.output_dir, make_inputs=config.make_inputs, pack_inputs=config.pack_inputs,
            dynamic_lora_r=config.dynamic_lora_r, optional_inputs=config.optional_inputs,
            save_format=config.save_format, base_model=model.base_model, tokenizer_dir=tokenizer_dir)
    except ExtractError as exc:
        raise PassError(str(exc)) from None
    signature = result.signature
    ranks = sorted(set(result.ranks.values()))
    context.note(adapter_modules=len(result.ranks), adapter_ranks=ranks, adapter_slots=len(signature.slots),
                 adapter_mode=signature.mode, packed=signature.packed)
    context.report_metric("adapter_modules", len(result.ranks))
    has_tokenizer = (Path(context.output_dir) / "tokenizer_config.json").is_file()
    return OnnxModel(
        path=str(result.model_path), adapter_weights=str(result.weights_path), adapter_mode=signature.mode,
        adapter_names=sorted(signature.slots), packed=signature.packed, base_model=signature.base_model,
        task=model.task, tokenizer_path=str(context.output_dir) if has_tokenizer else model.tokenizer_path)
