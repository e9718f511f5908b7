"""hostkit-lora: the LoRA pass, and the fine-tuning machinery of the LoRA family.

QLoRA and LoftQ import :mod:`hostkit_lora.training` (``LoraTraining``, ``run_lora``),
:mod:`hostkit_lora.config` (``LoRAConfig``) and :mod:`hostkit_lora.checks`
(``check_lora``). Importing this package, its ``plugin`` or ``config`` module
never imports torch, transformers, peft or datasets.
"""

__version__ = "0.1.0"
