"""Options of ``type = "LoftQ"``: LoRA's, QLoRA's base options, and ``loftq_iter``.

As in Olive, LoftQ quantizes to 4-bit nf4 without double quantization: its
:attr:`LoftQConfig.four_bit` settings (what hostkit-qlora's 4-bit training reads)
fix those, and ``compute_dtype`` / ``save_quant_config`` mean what they mean for
QLoRA.

Differences from Olive, on purpose:

* ``target_modules`` given by the user is honoured (Olive replaces it with
  every linear layer but ``lm_head``); omitted, it is ``"all-linear"`` (peft's
  rule: every linear layer but the output layer), which is Olive's choice.
* ``torch_dtype`` defaults as for LoRA: float32 on CPU, bfloat16 on GPU.
"""

from __future__ import annotations

import attrs

from hostkit import one_of, option, positive
from hostkit_lora.config import DTYPES, LoRAConfig
from hostkit_qlora.config import FourBitSettings


@attrs.frozen(kw_only=True)
class LoftQConfig(LoRAConfig):
    """Options of ``type = "LoftQ"`` (LoftQ, arXiv:2310.08659)."""

    target_modules: list[str] | str | None = option(
        None, help="module names to adapt (and LoftQ-initialise), or \"all-linear\"; omitted: all-linear "
                   "(every linear layer but the output layer, as Olive's LoftQ)",
        validator=attrs.fields(LoRAConfig).target_modules.validator)  # LoRA's check, only the help differs
    loftq_iter: int = option(1, help="alternations of nf4 quantization and rank-r SVD per layer (the paper's T)",
                             validator=positive)
    compute_dtype: str | None = option(
        None, help="dtype the 4-bit layers compute in (bnb_4bit_compute_dtype); omitted: torch_dtype",
        validator=one_of(*DTYPES))
    save_quant_config: bool = option(
        True, help="record the 4-bit settings in the output model, so later passes load the base in nf4; "
                   "false: the output base (model/, full precision) loads unquantized")

    @property
    def four_bit(self) -> FourBitSettings:
        return FourBitSettings(quant_type="nf4", double_quant=False, compute_dtype=self.compute_dtype)
