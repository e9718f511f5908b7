"""The two LoRA name dialects (hostkit's graphs, onnxruntime-genai's builder) and the mapping between them."""

from __future__ import annotations

import numpy as np
import pytest

from hostkit_adapters.contract import ContractError
from hostkit_adapters.dialects import (GENAI, HOSTKIT, dialect_of, genai_modules, hostkit_name_of, is_genai_name,
                                       other_dialect_problem, to_genai)


def test_names_of_each_dialect():
    assert is_genai_name("model.layers.3.attn.q_proj.lora_A.MatMul.weight")
    assert not is_genai_name("model.layers.3.self_attn.q_proj.lora_A.weight")
    assert dialect_of(["model.layers.0.mlp.up_proj.lora_B.MatMul.weight", "model.layers.0.mlp.up_proj.weight"]) == GENAI
    assert dialect_of(["model.layers.0.self_attn.v_proj.lora_B.weight"]) == HOSTKIT
    assert dialect_of(["model.embed_tokens.weight"]) is None
    with pytest.raises(ContractError, match="mix"):
        dialect_of(["model.layers.0.self_attn.v_proj.lora_B.weight", "model.layers.0.attn.v_proj.lora_B.MatMul.weight"])
    assert hostkit_name_of("model.layers.1.attn.o_proj.lora_B.MatMul.weight") == "model.layers.1.self_attn.o_proj.lora_B.weight"
    assert hostkit_name_of("model.layers.1.mlp.down_proj.lora_A.MatMul.weight") == "model.layers.1.mlp.down_proj.lora_A.weight"


def test_module_mapping_and_what_cannot_map():
    assert genai_modules("model.layers.2.self_attn.k_proj") == ("model.layers.2.attn.k_proj",)
    assert genai_modules("model.layers.0.self_attn.qkv_proj") == tuple(f"model.layers.0.attn.{p}" for p in ("q_proj", "k_proj", "v_proj"))
    assert genai_modules("model.layers.0.mlp.gate_up_proj") == ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj")
    for module in ("lm_head", "model.embed_tokens", "model.norm"):
        with pytest.raises(ContractError, match="attention and MLP projections of the decoder layers only"):
            genai_modules(module)


def test_to_genai_renames_and_splits_fused_modules():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((16, 4)), rng.standard_normal((4, 16 + 8 + 8))
    up_a, up_b = rng.standard_normal((16, 2)), rng.standard_normal((2, 32))
    weights = {"model.layers.0.self_attn.qkv_proj.lora_A.weight": a, "model.layers.0.self_attn.qkv_proj.lora_B.weight": b,
               "model.layers.0.mlp.up_proj.lora_A.weight": up_a, "model.layers.0.mlp.up_proj.lora_B.weight": up_b}
    out, problems = to_genai(weights, {"model.layers.0.attn.q_proj": 16, "model.layers.0.attn.k_proj": 8,
                                       "model.layers.0.attn.v_proj": 8})
    assert problems == []
    for proj in ("q_proj", "k_proj", "v_proj"):  # one A shared by the parts
        assert out[f"model.layers.0.attn.{proj}.lora_A.MatMul.weight"] is a
    np.testing.assert_array_equal(out["model.layers.0.attn.q_proj.lora_B.MatMul.weight"], b[:, :16])
    np.testing.assert_array_equal(out["model.layers.0.attn.k_proj.lora_B.MatMul.weight"], b[:, 16:24])
    np.testing.assert_array_equal(out["model.layers.0.attn.v_proj.lora_B.MatMul.weight"], b[:, 24:])
    assert out["model.layers.0.mlp.up_proj.lora_B.MatMul.weight"] is up_b
    _, problems = to_genai(weights, {"model.layers.0.attn.q_proj": 16, "model.layers.0.attn.k_proj": 16,
                                     "model.layers.0.attn.v_proj": 16})
    assert problems == ["model.layers.0.self_attn.qkv_proj: fused B has 32 columns, the model's q_proj/k_proj/v_proj "
                        "take 48 ([16, 16, 16])"]
    _, problems = to_genai({"lm_head.lora_A.weight": a})
    assert problems and problems[0].startswith("lm_head: onnxruntime-genai's builder takes LoRA")


def test_other_dialect_problem_names_both_forms():
    line = other_dialect_problem(["model.layers.0.self_attn.q_proj.lora_A.weight"], GENAI)
    assert "hostkit's dialect (model.layers.0.self_attn.q_proj.lora_A.weight)" in line
    assert "(model.layers.0.attn.q_proj.lora_A.MatMul.weight)" in line
    line = other_dialect_problem(["model.layers.0.attn.q_proj.lora_A.MatMul.weight"], HOSTKIT)
    assert "onnxruntime-genai's dialect" in line and "(model.layers.0.self_attn.q_proj.lora_A.weight)" in line
    assert other_dialect_problem(["model.layers.0.attn.q_proj.lora_A.MatMul.weight"], GENAI) is None
