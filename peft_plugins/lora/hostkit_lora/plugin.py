"""Entry-point target of hostkit-lora: hookimpls only, no heavy imports."""

from __future__ import annotations

from typing import Any

from hostkit import HfModel, PassSpec, Requirements, hookimpl

from hostkit_lora.checks import check_lora
from hostkit_lora.config import LoRAConfig
from hostkit_lora.data import data_type_specs

#: What every pass of the LoRA family needs (QLoRA and LoftQ add bitsandbytes).
REQUIRED_MODULES = {
    "torch": "torch>=2.2",
    "transformers": "transformers>=4.45",
    "peft": "peft>=0.13",
    "datasets": "datasets>=2.19",
    "accelerate": "accelerate>=0.30",
}


@hookimpl
def hostkit_register(register: Any) -> None:
    register.pass_type(PassSpec(
        name="LoRA", config_cls=LoRAConfig, run="hostkit_lora.training:run_lora",
        summary="fine-tune a LoRA adapter on a transformers model (arXiv:2106.09685)",
        requires=Requirements(modules=dict(REQUIRED_MODULES), gpu="optional",
                              notes="float32 on CPU, bfloat16 on GPU by default; torchrun for DDP"),
        check=check_lora,
    ))
    for spec in data_type_specs():  # the text tables QLoRA and LoftQ train on too
        register.data_type(spec)


@hookimpl
def hostkit_load_model(model: Any, context: Any) -> Any:
    """An ``HfModel`` with a ``gguf_file`` becomes a cached safetensors folder (transformers, once)."""
    if not (isinstance(model, HfModel) and model.gguf_file):
        return None
    from hostkit_lora.gguf import convert_gguf

    return convert_gguf(model, context)
