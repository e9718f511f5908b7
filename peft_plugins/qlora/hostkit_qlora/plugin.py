"""Entry-point target of hostkit-qlora: hookimpls only, no heavy imports."""

from __future__ import annotations

from typing import Any

from hostkit import PassSpec, Requirements, hookimpl
from hostkit_lora.checks import check_lora
from hostkit_lora.plugin import REQUIRED_MODULES

from hostkit_qlora.config import QLoRAConfig


def check_qlora(config: QLoRAConfig, context: Any, pass_name: str = "QLoRA") -> list[str]:
    problems = check_lora(config, context, pass_name)
    model = getattr(context, "model", None)
    if model is not None and getattr(model, "quantization", None):
        problems.append("model.quantization: the input model is already quantized; QLoRA needs a full-precision base")
    return problems


def run_qlora(config: QLoRAConfig, model: Any, context: Any) -> Any:
    """LoRA's training with a 4-bit base (imported only when the pass runs)."""
    from hostkit_lora.training import run_lora
    from hostkit_qlora.quantized import QLoraTraining

    return run_lora(config, model, context, training_cls=QLoraTraining)


@hookimpl
def hostkit_register(register: Any) -> None:
    register.pass_type(PassSpec(
        name="QLoRA", config_cls=QLoRAConfig, run=run_qlora,
        summary="fine-tune a LoRA adapter on a 4-bit nf4/fp4 base, CPU or CUDA (arXiv:2305.14314)",
        requires=Requirements(modules={**REQUIRED_MODULES, "bitsandbytes": "bitsandbytes>=0.50"}, gpu="optional",
                              notes="runs on CPU with bitsandbytes>=0.50 (float32 compute by default)"),
        check=check_qlora,
    ))
