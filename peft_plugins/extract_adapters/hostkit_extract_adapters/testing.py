"""Helpers for tests and benchmarks: PEFT adapters with visible effect, torch references, and a
stand-in exporter.

:func:`export_peft_llama` writes an unmerged PEFT causal LM to ONNX the way
torch's exporter does (PEFT names and layout behind a ``Transpose``) with the
scaling folded into ``lora_B``, which ExtractAdapters brings into the contract;
it stands in for OnnxConversion where that plugin is not installed. Everything
here imports torch, transformers and peft inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def make_peft_adapter(base_dir: Path, out_dir: Path, seed: int, **lora: Any) -> Path:
    """A PEFT LoRA adapter with random (non-zero) A and B, saved like a trained one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    config = LoraConfig(init_lora_weights=False, **{"target_modules": ["q_proj", "v_proj"], **lora})
    model = get_peft_model(base, config)
    with torch.no_grad():  # random init is small; make the adapter's effect clearly visible
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.mul_(4.0)
    model.save_pretrained(out_dir)
    return out_dir


def peft_logits(base_dir: Path, adapter_dir: Path | None, input_ids: np.ndarray) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager")
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    with torch.no_grad():
        ids = torch.from_numpy(input_ids)
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()


def peft_greedy(base_dir: Path, adapter_dir: Path | None, prompt_ids: list[int], new_tokens: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager")
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt_ids):]


def export_logits_graph(model: Any, out_path: Path, *, constant_folding: bool) -> Path:
    """A causal LM to ONNX with torch's legacy exporter: input_ids, attention_mask -> logits,
    dynamic batch and sequence (opset 17). Without constant folding, LoRA weights keep their names."""
    import warnings

    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    ids = torch.tensor([[1, 5, 9, 33, 2, 7]])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits(model), (ids, torch.ones_like(ids)), str(out_path), dynamo=False,
                          do_constant_folding=constant_folding, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask", "logits")})
    return out_path


def export_peft_llama(base_dir: Path, adapter_dir: Path, out_path: Path) -> Path:
    """Stand-in for OnnxConversion: an unmerged PEFT Llama in ONNX with the LoRA weights as named initializers.

    The scaling is folded into lora_B (as the contract wants) and torch's legacy
    exporter keeps PEFT's names and layout behind a Transpose, which
    ExtractAdapters brings into the contract.
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    from hostkit_adapters.contract import base_model_identity

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager"),
                                      adapter_dir)
    model.eval()
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name in module.active_adapters:
                module.lora_B[name].weight.data *= module.scaling[name]
                module.scaling[name] = 1.0
    export_logits_graph(model.get_base_model(), out_path, constant_folding=False)
    import onnx

    proto = onnx.load(str(out_path))
    renames = {t.name: t.name[len("inner."):] for t in proto.graph.initializer if t.name.startswith("inner.")}
    for tensor in proto.graph.initializer:
        tensor.name = renames.get(tensor.name, tensor.name)
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "hostkit.base_model", base_model_identity(str(base_dir))
    onnx.save(proto, str(out_path))
    return out_path


def own_and_second_adapters(base_dir: Path, root: Path) -> tuple[Path, Path]:
    """The two PEFT adapters of the end-to-end cases, made separately: the "own" one (r=4, alpha 8) and a
    "trained in a separate run" one (r=8, rsLoRA, per-module rank and alpha)."""
    own = make_peft_adapter(base_dir, root / "adapter-own", seed=1, r=4, lora_alpha=8)
    second = make_peft_adapter(base_dir, root / "adapter-second", seed=2, r=8, lora_alpha=16, use_rslora=True,
                               rank_pattern={"layers.1.self_attn.v_proj": 2}, alpha_pattern={"q_proj": 4})
    return own, second
