"""Entry-point target of hostkit-loftq: hookimpls only, no heavy imports."""

from __future__ import annotations

from typing import Any

from hostkit import PassSpec, Requirements, hookimpl
from hostkit_lora.checks import check_lora
from hostkit_lora.plugin import REQUIRED_MODULES

from hostkit_loftq.config import LoftQConfig


def check_loftq(config: LoftQConfig, context: Any) -> list[str]:
    """LoRA's checks, plus what LoftQ cannot do (validation time, no heavy imports)."""
    problems = check_lora(config, context)
    if config.use_dora:
        problems.append("use_dora: DoRA's magnitude vector is computed from the base weight when the adapter is "
                        "created, which LoftQ then changes; use LoRA (or QLoRA) for DoRA")
    model = getattr(context, "model", None)
    if model is not None and getattr(model, "quantization", None):
        problems.append("model.quantization: the input model is already quantized; LoftQ needs the "
                        "full-precision weights")
    return problems


@hookimpl
def hostkit_register(register: Any) -> None:
    register.pass_type(PassSpec(
        name="LoftQ", config_cls=LoftQConfig,
        summary="LoftQ: quantization-aware LoRA init on an nf4 base, then fine-tune (arXiv:2310.08659)",
        requires=Requirements(modules={**REQUIRED_MODULES, "bitsandbytes": "bitsandbytes>=0.48"}, gpu="optional",
                              notes="runs on CPU (bitsandbytes >= 0.48) and CUDA; float32 on CPU by default"),
        check=check_loftq,
    ))


@hookimpl
def hostkit_run_pass(pass_type: str, config: Any, model: Any, context: Any) -> Any:
    if pass_type != "LoftQ":
        return None
    from hostkit_loftq.training import run_loftq

    return run_loftq(config, model, context)
