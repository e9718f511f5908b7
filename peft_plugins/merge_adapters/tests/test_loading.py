"""Dequantizing a bitsandbytes base: exact for 4-bit (every variant), half a step for 8-bit."""

from __future__ import annotations

import pytest

from hostkit import HfModel
from hostkit_merge_adapters.loading import dequantize_linear_weights, load_base, load_quantized_base

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("settings", [
    {"bnb_4bit_quant_type": "fp4"},
    {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True},
])
def test_4bit_variants_dequantize_exactly(tiny_llama, settings, batch):
    """The float model with dequantized weights computes what the 4-bit model computes."""
    quantization = {"load_in_4bit": True, "bnb_4bit_compute_dtype": "float32", **settings}
    handle = HfModel(path=str(tiny_llama), quantization=quantization)
    quantized = load_quantized_base(handle).eval()
    model, facts = load_base(handle)
    assert facts["dequantized"] is True and facts["dequantized_modules"] == 14
    ids, mask = batch
    with torch.no_grad():
        expected = quantized(input_ids=ids, attention_mask=mask).logits
        got = model(input_ids=ids, attention_mask=mask).logits
    assert (got - expected).abs()[mask.bool()].max().item() <= 1e-4


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
