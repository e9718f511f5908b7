"""Options of ``type = "QLoRA"``: every LoRA option plus the 4-bit quantization of the base.

Names and defaults are Olive's (``quant_type`` nf4, ``double_quant`` false,
``save_quant_config`` true), except ``compute_dtype``, which follows
``torch_dtype``: float32 on CPU (bf16 compute is 15-35x slower on AVX2 CPUs
without native bf16), bfloat16 on a GPU.
"""

from __future__ import annotations

import attrs

from hostkit import one_of, option
from hostkit_lora.config import DTYPES, LoRAConfig


@attrs.frozen
class FourBitSettings:
    """How the base is quantized and computed: what 4-bit training reads (QLoRA, LoftQ).

    QLoRA takes it from its options (:attr:`QLoRAConfig.four_bit`); LoftQ supplies
    nf4 without double quantization, fixed (``LoftQConfig.four_bit``).
    """

    quant_type: str = "nf4"
    double_quant: bool = False
    compute_dtype: str | None = None  # None: the pass's torch_dtype
    cpu_low_memory: bool = True


@attrs.frozen(kw_only=True)
class QLoRAConfig(LoRAConfig):
    """Options of ``type = "QLoRA"`` (QLoRA, arXiv:2305.14314)."""

    quant_type: str = option("nf4", help="4-bit data type of the base weights: nf4 (NormalFloat) or fp4",
                             validator=one_of("nf4", "fp4"))
    double_quant: bool = option(False, help="quantize the quantization constants too (saves ~0.4 bit per weight)")
    compute_dtype: str | None = option(None, help="dtype the 4-bit layers compute in; omitted: torch_dtype "
                                                  "(float32 on CPU, bfloat16 on GPU)", validator=one_of(*DTYPES))
    save_quant_config: bool = option(True, help="record the 4-bit settings in the output handle, so later passes "
                                                "load the base the same way")
    cpu_low_memory: bool = option(True, help="CPU only: hand each layer's dequantized weight buffer back to the OS "
                                             "at once (training peak 0.57x, steps 1.7x slower on an 88M model)")

    @property
    def four_bit(self) -> FourBitSettings:
        return FourBitSettings(quant_type=self.quant_type, double_quant=self.double_quant,
                               compute_dtype=self.compute_dtype, cpu_low_memory=self.cpu_low_memory)
