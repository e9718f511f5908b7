"""Test helpers: the kernel-independent reference of a 4-bit model.

"Exact" for a 4-bit base means: equal to the float model whose linear weights are
``bitsandbytes.functional.dequantize_4bit`` of the stored 4-bit weights, computed in
float32. That reference is built here explicitly, module by module, so it does not depend
on which 4-bit kernel bitsandbytes picks on the machine (AVX2 and AVX512-BF16 CPUs differ).
"""

from __future__ import annotations

from typing import Any

import torch


def load_4bit(path: str, quantization: dict[str, Any], task_class: Any = None) -> Any:
    """A model loaded in 4-bit with transformers + bitsandbytes on CPU, float32 elsewhere, no forward run yet."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    cls = task_class or AutoModelForCausalLM
    return cls.from_pretrained(path, dtype=torch.float32, device_map="cpu",
                               quantization_config=BitsAndBytesConfig(**quantization))


@torch.no_grad()
def dequantized_reference(quantized: Any) -> Any:
    """Replace every ``Linear4bit`` of a freshly loaded 4-bit ``quantized`` model by a float32
    ``torch.nn.Linear`` holding ``dequantize_4bit(weight)``; returns the same (now float) model."""
    import bitsandbytes as bnb

    targets = [(name, module) for name, module in quantized.named_modules() if isinstance(module, bnb.nn.Linear4bit)]
    assert targets, "no bitsandbytes 4-bit layer in the model"
    for name, module in targets:
        state = module.weight.quant_state
        assert not getattr(state, "packing_format_for_cpu", False), f"{name} already ran a packed CPU forward"
        weight = bnb.functional.dequantize_4bit(module.weight.data, state).to(torch.float32)
        linear = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        linear.weight.copy_(weight)
        if module.bias is not None:
            linear.bias.copy_(module.bias.float())
        parent, _, child = name.rpartition(".")
        setattr(quantized.get_submodule(parent) if parent else quantized, child, linear)
    if hasattr(quantized, "is_quantized"):
        quantized.is_quantized = False
    return quantized.float().eval()


def relative_delta(got: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """max |got - expected| over the unmasked positions, relative to the largest |expected| there."""
    diff = (got.float() - expected.float()).abs()
    ref = expected.float().abs()
    if mask is not None:
        diff, ref = diff[mask.bool()], ref[mask.bool()]
    return diff.max().item() / (ref.max().item() or 1.0)
