"""Replace peft's LoRA layers by modules whose weights *are* the adapter contract.

peft's ``lora.Linear`` computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling``
with ``lora_A.weight`` ``[r, in]``, ``lora_B.weight`` ``[out, r]`` and the
scaling as a separate multiplication. Exported as is, the graph holds
``...lora_A.default.weight`` feeding a Transpose, and a ``Mul`` by alpha/r; the
dynamo exporter's optimizer then folds the transposes into anonymous
initializers, and the adapter's identity is lost (measured, see README).

:class:`ContractLoraLinear` holds the base weight under the base layer's own
name and the adapter under the contract names, already in contract layout
(:mod:`hostkit_adapters.contract`): ``lora_A.weight`` ``[in, r]`` and
``lora_B.weight`` ``[r, out]`` with the scaling folded in, and computes
``y = x W^T + b + (x A) B``. With nothing to transpose or fold, every exporter
(dynamo with or without optimization, torchscript) keeps the names, and A, B
feed the MatMuls directly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hostkit import PassError
from hostkit_adapters import contract as adapter_contract


class _Weight(nn.Module):
    """A bare holder, so that the parameter's qualified name ends in ``lora_A.weight``."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)


class ContractLoraLinear(nn.Module):
    """``y = x W^T + b + (x A) B``: a linear layer plus a LoRA adapter in contract layout.

    LoRA: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
    arXiv:2106.09685 (``h = W0 x + B A x`` with the update scaled by alpha/r).
    """

    def __init__(self, base: nn.Linear, lora_a: torch.Tensor, lora_b: torch.Tensor):
        super().__init__()
        self.weight = base.weight
        self.bias = base.bias
        self.lora_A = _Weight(lora_a)
        self.lora_B = _Weight(lora_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + torch.matmul(torch.matmul(x, self.lora_A.weight),
                                                                  self.lora_B.weight)


def replace_lora_layers(peft_model: Any, adapter_config: dict[str, Any], adapter_name: str = "default") -> tuple[Any, list[str]]:
    """Unwrap a ``PeftModel`` into its base model with :class:`ContractLoraLinear` layers.

    Returns the base model and the contract names of the adapter weights, in
    module order. The scaling folded into B is :func:`adapter_contract.lora_scaling`;
    it is checked against the scaling peft itself uses, so the contract and
    peft cannot silently disagree.
    """
    from peft.tuners.lora import LoraLayer

    reason = adapter_contract.unsupported_reason(adapter_config)
    if reason:
        raise PassError(f"the adapter cannot be kept apart in ONNX: {reason} "
                        "(or set merge_adapter_weights = true)")
    model = peft_model.get_base_model()
    names: list[str] = []
    replacements = []
    for module_name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        base = module.get_base_layer()
        if adapter_name not in getattr(module, "lora_A", {}) or type(base) is not nn.Linear:
            raise PassError(f"LoRA on {module_name} ({type(base).__name__}) cannot be expressed by the adapter "
                            "contract, which covers torch.nn.Linear layers only; set merge_adapter_weights = true")
        ours = adapter_contract.lora_scaling(adapter_config, module_name)
        theirs = module.scaling[adapter_name]
        if not math.isclose(ours, theirs, rel_tol=1e-9):
            raise RuntimeError(f"{module_name}: the adapter contract computes scaling {ours}, peft uses {theirs}")
        peft_a = module.lora_A[adapter_name].weight.detach()
        peft_b = module.lora_B[adapter_name].weight.detach()
        a = adapter_contract.to_contract_weight(peft_a, "lora_A").contiguous()
        b = adapter_contract.to_contract_weight(peft_b, "lora_B", ours).contiguous()
        name_a = adapter_contract.contract_name(f"{adapter_contract.PEFT_PREFIX}{module_name}.lora_A.{adapter_name}.weight",
                                                adapter_name)
        name_b = adapter_contract.contract_name(f"{adapter_contract.PEFT_PREFIX}{module_name}.lora_B.{adapter_name}.weight",
                                                adapter_name)
        replacements.append((module_name, ContractLoraLinear(base, a.to(base.weight.dtype), b.to(base.weight.dtype))))
        names += [name_a, name_b]
    if not replacements:
        raise PassError("the adapter has no LoRA layer on this model (check its target_modules)")
    for module_name, new in replacements:
        parent_name, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    # the qualified names of the new parameters are the contract names
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise RuntimeError(f"contract names not found among the model's parameters: {missing[:4]}")
    return model, names
