"""What QLoRA does differently from LoRA, all of it: a 4-bit base.

QLoRA (Dettmers et al., arXiv:2305.14314) backpropagates through a frozen base
quantized to 4 bits (NormalFloat4 or FP4, optionally with the quantization
constants quantized again, "double quantization") into LoRA adapters kept in
full precision: ``y = dequant(Q) x + (alpha/r) B A x``.

Against :class:`hostkit_lora.training.LoraTraining` this changes four hooks:

* ``quantization()``: ``transformers.BitsAndBytesConfig`` arguments (4-bit,
  ``quant_type``, ``double_quant``, ``compute_dtype``);
* ``prepare_model()``: ``peft.prepare_model_for_kbit_training`` (norms and
  embeddings in fp32, input grads for checkpointing) instead of a plain freeze;
* ``default_target_modules()``: every 4-bit linear layer (the paper adapts all
  of them); a user's ``target_modules`` is honoured (Olive overrides it);
* ``output_handle()``: the handle records the 4-bit settings.

CPU path: bitsandbytes >= 0.50 quantizes and computes nf4/fp4 on CPU; the base
is loaded on the CPU (with bitsandbytes' AVX512-BF16 inference repacking turned
off, so every forward is ``dequantize(Q)`` in the compute dtype on every CPU), compute is float32 by default, the optimizer is
``adamw_torch`` (paged optimizers need CUDA). CUDA path: the base is loaded
onto the process's GPU (``device_map={"": LOCAL_RANK}``), compute defaults to
bfloat16 and the optimizer to Olive's ``paged_adamw_32bit``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from hostkit import HfModel, PassError
from hostkit_lora.training import LoraTraining

from hostkit_qlora.config import QLoRAConfig


class QLoraTraining(LoraTraining):
    """LoRA on a 4-bit base; see the module doc for the four hooks it overrides."""

    pass_name = "QLoRA"
    config: QLoRAConfig

    def __init__(self, config: QLoRAConfig, model: HfModel, context: Any):
        super().__init__(config, model, context)
        if model.quantization or _saved_quantization(model.path):
            raise PassError("model: the input model is already quantized; QLoRA quantizes a full-precision base "
                            "(use the LoRA pass to train on an already quantized model)")
        self.quantized_modules: list[str] = []

    def quantization(self) -> dict[str, Any]:
        settings = self.config.four_bit  # FourBitSettings: QLoRA's options, or LoftQ's fixed nf4
        return {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": settings.quant_type,
            "bnb_4bit_use_double_quant": settings.double_quant,
            "bnb_4bit_compute_dtype": settings.compute_dtype or self.dtype_name,
        }

    def low_memory_heap(self) -> bool:
        return self.config.four_bit.cpu_low_memory and not self.use_gpu

    def training_defaults(self) -> dict[str, Any]:
        return {"optim": "paged_adamw_32bit"} if self.use_gpu else {"optim": "adamw_torch"}

    def prepare_model(self, model: Any) -> Any:
        import bitsandbytes as bnb
        import peft
        from hostkit_merge_adapters.loading import exact_4bit_forward

        self.quantized_modules = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                                         if isinstance(module, bnb.nn.Linear4bit)})
        # train and evaluate against dequantize(Q) in the compute dtype on every CPU: what
        # MergeAdapterWeights and the exporters reproduce (AVX512-BF16 CPUs would otherwise switch
        # evaluation, and every forward after it, to a bf16 kernel with bf16 block scales)
        repacking_disabled = exact_4bit_forward(model)
        model = peft.prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=self.checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
        self.context.note(quantization=self.quantization(), quantized_modules=self.quantized_modules,
                          quantized_forward=f"dequantize + matmul in {self.quantization()['bnb_4bit_compute_dtype']}",
                          cpu_repacking_disabled=repacking_disabled)
        return model

    def default_target_modules(self, model: Any) -> list[str]:
        return self.quantized_modules

    def output_handle(self, adapter_dir: Path) -> HfModel:
        handle = super().output_handle(adapter_dir)
        if self.config.save_quant_config:
            handle = attrs.evolve(handle, quantization=self.quantization())
        return handle


def _saved_quantization(path: str) -> bool:
    try:
        return "quantization_config" in json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
