"""Entry-point target of hostkit-loftq: hookimpls only, no heavy imports."""

from __future__ import annotations

from typing import Any

from hostkit import PassSpec, Requirements, hookimpl
from hostkit_lora.plugin import REQUIRED_MODULES
from hostkit_qlora.plugin import check_qlora

from hostkit_loftq.config import LoftQConfig


def check_loftq(config: LoftQConfig, context: Any) -> list[str]:
    """QLoRA's checks (LoRA's + no quantized input), plus what LoftQ cannot do. No heavy imports."""
    problems = check_qlora(config, context, "LoftQ")
    if config.use_dora:
        problems.append("use_dora: DoRA's magnitude vector is computed from the base weight when the adapter is "
                        "created, which LoftQ then changes; use LoRA (or QLoRA) for DoRA")
    return problems


@hookimpl
def hostkit_register(register: Any) -> None:
    register.pass_type(PassSpec(
        name="LoftQ", config_cls=LoftQConfig, run="hostkit_loftq.training:run_loftq",
        summary="LoftQ: quantization-aware LoRA init on an nf4 base, then fine-tune (arXiv:2310.08659)",
        requires=Requirements(modules={**REQUIRED_MODULES, "bitsandbytes": "bitsandbytes>=0.50"}, gpu="optional",
                              notes="runs on CPU (bitsandbytes >= 0.50) and CUDA; float32 on CPU by default"),
        check=check_loftq,
    ))
