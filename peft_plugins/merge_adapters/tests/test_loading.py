"""Dequantizing a bitsandbytes base: exact for 4-bit (every variant), half a step for 8-bit.

"Exact" is measured against the explicit reference of :mod:`hostkit_merge_adapters.testing`
(float32 linear layers holding ``dequantize_4bit`` of the stored weights), never against the
4-bit model's own forward, whose kernel depends on the CPU: on AVX512-BF16 machines
bitsandbytes computes inference-mode 4-bit forwards in bfloat16 (~2e-3 off).
"""

from __future__ import annotations

import pytest

from hostkit import HfModel
from hostkit_merge_adapters.loading import (dequantize_linear_weights, exact_4bit_forward, load_base,
                                            load_quantized_base)
from hostkit_merge_adapters.testing import dequantized_reference, load_4bit, relative_delta

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

#: float32 rounding of a different matmul order, relative to the logits' scale
EXACT = 1e-5
#: how far a machine's own 4-bit kernel may be from the dequantized reference (bf16 compute is ~1e-3)
LOOSE = 3e-2

VARIANTS = [
    {"bnb_4bit_quant_type": "fp4"},
    {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True},
]


def _logits(model, batch):
    ids, mask = batch
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("settings", VARIANTS)
def test_4bit_variants_dequantize_exactly(tiny_llama, settings, batch):
    """The float model load_base builds computes the explicit dequantized reference, on any CPU."""
    quantization = {"load_in_4bit": True, "bnb_4bit_compute_dtype": "float32", **settings}
    reference = _logits(dequantized_reference(load_4bit(str(tiny_llama), quantization)), batch)
    model, facts = load_base(HfModel(path=str(tiny_llama), quantization=quantization))
    assert facts["dequantized"] is True and facts["dequantized_modules"] == 14
    assert relative_delta(_logits(model, batch), reference, batch[1]) <= EXACT

    # the machine's own 4-bit kernel: recorded, and only loosely bounded
    deviation = facts["quantized_kernel_deviation"]
    assert set(deviation) == {"kernel", "max_abs", "relative"}
    assert 0.0 <= deviation["relative"] <= LOOSE, deviation


@pytest.mark.parametrize("settings", VARIANTS)
def test_exact_forward_matches_the_reference_in_eval_and_training(tiny_llama, settings, batch):
    """With exact_4bit_forward, the 4-bit model itself computes the reference (eval and train mode)."""
    quantization = {"load_in_4bit": True, "bnb_4bit_compute_dtype": "float32", **settings}
    reference = _logits(dequantized_reference(load_4bit(str(tiny_llama), quantization)), batch)
    quantized = load_quantized_base(HfModel(path=str(tiny_llama), quantization=quantization))
    assert relative_delta(_logits(quantized.eval(), batch), reference, batch[1]) <= EXACT
    assert relative_delta(_logits(quantized.train(), batch), reference, batch[1]) <= EXACT


def test_an_approximate_kernel_changes_the_recorded_deviation_not_the_result(tiny_llama, batch):
    """bf16 compute stands in for an approximate 4-bit kernel (as AVX512-BF16 machines use):
    the merged base stays exact against the float32 reference; only the recorded deviation grows."""
    quantization = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}
    reference = _logits(dequantized_reference(load_4bit(str(tiny_llama), quantization)), batch)
    model, facts = load_base(HfModel(path=str(tiny_llama), quantization=quantization))
    assert relative_delta(_logits(model, batch), reference, batch[1]) <= EXACT
    deviation = facts["quantized_kernel_deviation"]["relative"]
    assert 1e-4 < deviation <= LOOSE, deviation


def test_exact_forward_undoes_a_packed_cpu_layout(tiny_llama):
    """As on an AVX512-BF16 machine: a layer already repacked for the bf16 kernel is unpacked to the
    dequantizable layout, and no layer repacks again."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu, dequantize_4bit

    quantization = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float32"}
    quantized = load_4bit(str(tiny_llama), quantization)
    layer = quantized.model.layers[0].self_attn.q_proj
    expected = dequantize_4bit(layer.weight.data, layer.weight.quant_state).clone()
    layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(layer.weight.data,
                                                                                 layer.weight.quant_state)
    for module in quantized.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = True  # what bitsandbytes sets on such a CPU
    assert exact_4bit_forward(quantized) == 14
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    assert not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in quantized.modules())
    # the packing stored the block scales in bfloat16, so the round trip is within bf16 rounding, not exact:
    # which is why QLoRA turns the repacking off before the first forward
    unpacked = dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    assert torch.allclose(unpacked, expected, rtol=2.0**-8, atol=0.0)


def test_8bit_dequantizes_within_half_a_step(tiny_llama):
    """LLM.int8 storage is lossy (and its forward quantizes activations too), so: within half a step."""
    from transformers import AutoModelForCausalLM

    weights = dequantize_linear_weights(load_quantized_base(HfModel(path=str(tiny_llama),
                                                                    quantization={"load_in_8bit": True})))
    original = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    assert len(weights) == 14
    for name, weight in weights.items():
        w = original.get_submodule(name).weight
        half_step = w.abs().amax(dim=1, keepdim=True) / 127 / 2  # LLM.int8 row-wise absmax
        fp16_rounding = w.abs() * 2.0**-10  # bitsandbytes casts to float16 before quantizing
        assert ((weight - w).abs() <= half_step + fp16_rounding).all(), name


def test_float_base_is_not_dequantized(tiny_llama):
    model, facts = load_base(HfModel(path=str(tiny_llama)))
    assert facts == {"dequantized": False}
    assert next(model.parameters()).dtype == torch.float32
