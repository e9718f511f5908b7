"""Options of ``type = "LoRA"``: Olive's names and defaults, except where noted.

Differences from Olive, on purpose:

* ``torch_dtype`` defaults to ``None`` = *auto*: ``bfloat16`` (Olive's default)
  on a CUDA GPU, ``float32`` on CPU, with bf16 autocast only where the CPU has
  native bf16 and a probe finds it faster (:mod:`hostkit_lora.precision`). On an
  AVX2 CPU bf16 training runs 15-35x slower than fp32, and even with
  ``avx512_bf16`` it can be slower (0.6x measured on one such Xeon), so Olive's
  default would make CPU fine-tuning impractical.
* ``target_modules`` given by the user is always honoured (Olive's QLoRA/LoftQ
  silently replace it); omitted, peft's per-architecture mapping is used, or
  ``"all-linear"`` for architectures peft does not know (Olive raises).
* ``keep_checkpoints`` (new): Trainer checkpoints live in the step folder so an
  interrupted run resumes; they are deleted once the step succeeds unless kept.

QLoRA and LoftQ subclass :class:`LoRAConfig`, so every option here is theirs too.
"""

from __future__ import annotations

from typing import Any

import attrs

from hostkit import in_range, one_of, option, positive

DTYPES = ("float32", "bfloat16", "float16")


def _target_modules(_instance: Any, _attribute: Any, value: Any) -> None:
    if isinstance(value, str) and value != "all-linear":
        raise ValueError(f"expected a list of module names or \"all-linear\", got {value!r}")
    if isinstance(value, list) and not value:
        raise ValueError("an empty list targets nothing; omit the option for the default")


@attrs.frozen(kw_only=True)
class LoRAConfig:
    """Options of ``type = "LoRA"`` (LoRA, arXiv:2106.09685)."""

    train_data_config: str = option(help="name of the [data.NAME] table to train on", data=True)
    eval_data_config: str | None = option(None, help="name of the [data.NAME] table for the eval loss (optional)",
                                          data=True)
    r: int = option(64, help="LoRA rank", validator=positive)
    alpha: float = option(16.0, help="LoRA alpha; the update is scaled by alpha/r (alpha/sqrt(r) with use_rslora)",
                          validator=positive)
    lora_dropout: float = option(0.05, help="dropout on the LoRA input", validator=in_range(0.0, 1.0))
    target_modules: list[str] | str | None = option(
        None, help="module names to adapt, or \"all-linear\"; omitted: peft's default for the architecture, else all-linear",
        validator=_target_modules)
    modules_to_save: list[str] | None = option(None, help="modules trained in full and saved with the adapter (e.g. [\"lm_head\"])")
    use_rslora: bool = option(False, help="rank-stabilised LoRA: scale by alpha/sqrt(r) (arXiv:2312.03732)")
    use_dora: bool = option(False, help="weight-decomposed LoRA, DoRA (arXiv:2402.09353)")
    torch_dtype: str | None = option(
        None, help="dtype of the base weights: float32, bfloat16 or float16 (float16 = fp32 weights + fp16 mixed "
                   "precision, GPU only); omitted: bfloat16 on GPU, float32 on CPU (+ bf16 autocast where native bf16 is measured faster)",
        validator=one_of(*DTYPES))
    training_args: dict[str, Any] = option(
        factory=dict, help="transformers.TrainingArguments fields; Olive's defaults apply under them "
                           "(learning_rate 2e-4, constant schedule, 3% warmup, gradient checkpointing)")
    keep_checkpoints: bool = option(False, help="keep Trainer checkpoints in the step folder after a successful run")
