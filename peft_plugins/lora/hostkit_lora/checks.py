"""Validation-time checks of the LoRA family (``PassSpec.check``): no heavy imports.

Run by ``hostkit validate`` and before ``hostkit run`` loads anything, so a
typo in ``training_args``, a GPU-only setting on a CPU machine or a data config
that cannot feed this task fails in a second, with every problem listed.
"""

from __future__ import annotations

from typing import Any

from hostkit.hardware import cuda_visible

from hostkit_lora.data import TEXT_TYPES, TextData
from hostkit_lora.training_args import check_training_args


def check_lora(config: Any, context: Any, pass_name: str = "LoRA") -> list[str]:
    """Problems with a LoRA-family config, each ``"<option>: <message>"`` (``pass_name`` for messages)."""
    problems = check_training_args(config.training_args)
    if config.torch_dtype == "float16" and not cuda_visible():
        problems.append("torch_dtype: float16 trains with fp16 mixed precision, which needs a CUDA GPU, and none is "
                        "visible; use float32 (the CPU default) or bfloat16")
    model = getattr(context, "model", None)
    task = getattr(model, "task", "text-generation")
    # the step's planned input (after MergeAdapterWeights it has no adapter, whatever [model] says); None:
    # unknown after a pass that declares nothing (the pass checks at run time); absent: an older host
    fields = getattr(context, "input_fields", "absent")
    has_adapter = (bool(getattr(model, "adapter_path", None)) if fields == "absent"
                   else bool(fields and fields.get("adapter_path")))
    if model is not None and has_adapter:
        problems.append(f"model.adapter_path: the input model already has an adapter; {pass_name} "
                        "trains a new one on the base (merge the adapter first with MergeAdapterWeights)")
    for option in ("train_data_config", "eval_data_config"):
        name = getattr(config, option)
        data = context.data.get(name) if name else None
        if data is None:
            continue  # the host reports names without a [data.NAME] table
        where = f"{option}: data.{name}"
        if not isinstance(data, TextData):
            problems.append(f"{where} has type = {data.type!r}; training on text needs one of {', '.join(TEXT_TYPES)}")
            continue
        if task == "text-classification":
            if not data.label_field:
                problems.append(f"{where} needs label_field for a text-classification model")
            if data.packing != "none":
                problems.append(f"{where} sets packing = {data.packing!r}, which mixes examples: "
                                "not for text-classification")
    return problems
