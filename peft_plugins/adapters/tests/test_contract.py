"""The adapter contract module: names, scaling (as PEFT computes it), refusals, metadata."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from hostkit_adapters import contract as ac


@pytest.mark.parametrize("key", [
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
    "model.layers.0.self_attn.q_proj.lora_A.default.weight",
    "model.layers.0.self_attn.q_proj.lora_A.weight",
])
def test_contract_name_forms(key):
    assert ac.contract_name(key) == "model.layers.0.self_attn.q_proj.lora_A.weight"


def test_contract_name_other_adapter_and_b():
    key = "base_model.model.model.layers.1.mlp.down_proj.lora_B.french.weight"
    assert ac.contract_name(key, "french") == "model.layers.1.mlp.down_proj.lora_B.weight"
    with pytest.raises(ac.ContractError, match="belongs to adapter 'french'"):
        ac.contract_name(key)


@pytest.mark.parametrize("key", [
    "base_model.model.model.embed_tokens.lora_embedding_A.default",
    "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector.default.weight",
    "base_model.model.score.modules_to_save.default.weight",
    "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
])
def test_contract_name_refuses_non_lora(key):
    assert not ac.is_lora_key(key)
    with pytest.raises(ac.ContractError):
        ac.contract_name(key)


def test_module_path_kind_and_rank_axis():
    name = "model.layers.0.self_attn.q_proj.lora_B.weight"
    assert ac.module_path(name) == "model.layers.0.self_attn.q_proj"
    assert ac.module_path("base_model.model." + name) == "model.layers.0.self_attn.q_proj"
    assert ac.module_path("model.layers.0.mlp") == "model.layers.0.mlp"
    assert ac.weight_kind(name) == "lora_B" and ac.rank_axis(name) == 0
    assert ac.rank_axis(name.replace("lora_B", "lora_A")) == 1


def test_scaling_plain_and_rslora():
    cfg = {"r": 8, "lora_alpha": 16}
    assert ac.lora_scaling(cfg, "model.layers.0.self_attn.q_proj") == 2.0
    assert ac.lora_scaling({**cfg, "use_rslora": True}, "model.layers.0.self_attn.q_proj") == 16 / math.sqrt(8)


def test_scaling_patterns_match_peft(tiny_llama):
    """Every module's scaling equals the one PEFT itself computes for the same config."""
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    configs = [
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                   rank_pattern={"v_proj": 2, "model.layers.1.self_attn.q_proj": 6},
                   alpha_pattern={"layers.0.mlp.up_proj": 3, r"layers\.1\..*q_proj": 5}),
        LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "k_proj"],
                   rank_pattern={"k_proj": 8}),
    ]
    for config in configs:
        base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
        model = get_peft_model(base, config)
        checked = 0
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and "default" in module.scaling:
                ours = ac.lora_scaling(config.to_dict(), name)
                assert ours == pytest.approx(module.scaling["default"], rel=1e-12), name
                assert ac.module_rank_alpha(config, name)[0] == module.r["default"], name
                checked += 1
        assert checked >= 4


def test_to_contract_weight_layout():
    np = pytest.importorskip("numpy")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)  # PEFT A: [r=3, in=4]
    b = np.arange(15, dtype=np.float32).reshape(5, 3)  # PEFT B: [out=5, r=3]
    assert ac.to_contract_weight(a, "lora_A").shape == (4, 3)
    got_b = ac.to_contract_weight(b, "lora_B", 0.5)
    assert got_b.shape == (3, 5) and np.array_equal(got_b, b.T * 0.5)
    x = np.ones((2, 4), dtype=np.float32)
    # x A B (contract) == 0.5 * x A_peft^T B_peft^T (PEFT's forward)
    assert np.allclose(x @ ac.to_contract_weight(a, "lora_A") @ got_b, 0.5 * (x @ a.T @ b.T))


@pytest.mark.parametrize("cfg, word", [
    ({"peft_type": "LOHA"}, "LOHA"),
    ({"peft_type": "LORA", "use_dora": True}, "DoRA"),
    ({"lora_bias": True}, "lora_bias"),
    ({"bias": "all"}, "bias"),
    ({"modules_to_save": ["score"]}, "modules_to_save"),
    ({"target_parameters": ["experts.gate_up_proj"]}, "target_parameters"),
    ({"use_qalora": True}, "QA-LoRA"),
])
def test_unsupported(cfg, word):
    reason = ac.unsupported_reason({"r": 8, "lora_alpha": 8, **cfg})
    assert reason and word in reason


def test_supported():
    assert ac.unsupported_reason({"peft_type": "LORA", "r": 8, "lora_alpha": 8, "bias": "none",
                                  "modules_to_save": None, "use_dora": False, "rank_pattern": {"q": 2}}) is None


def test_metadata_round_trip():
    cfg = {"r": 8, "lora_alpha": 16, "use_rslora": False, "target_modules": ["v_proj", "q_proj"],
           "rank_pattern": {"v_proj": 4}}
    meta = ac.adapter_metadata(cfg, base_model="tiny@sha256:0123456789abcdef", dtype="float32")
    assert set(meta) == set(ac.METADATA_KEYS)
    assert all(isinstance(v, str) for v in meta.values())
    assert meta[ac.META_PRODUCER].startswith("hostkit ")
    back = ac.read_metadata(meta)
    assert back["r"] == 8 and back["alpha"] == 16.0 and back["use_rslora"] is False
    assert back["target_modules"] == ["q_proj", "v_proj"]
    assert back["rank_pattern"] == {"v_proj": 4} and back["dtype"] == "float32"
    assert back["contract"] == ac.CONTRACT_VERSION
    with pytest.raises(ac.ContractError, match="contract version"):
        ac.read_metadata({**meta, ac.META_CONTRACT: str(ac.CONTRACT_VERSION + 1)})


def test_base_model_identity(tmp_path, tiny_llama):
    import shutil

    one = ac.base_model_identity(str(tiny_llama))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama, copy)
    assert ac.same_base_model(one, ac.base_model_identity(str(copy)))
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) * 15 // 16 + 10] ^= 0xFF  # one weight byte inside a sampled range
    weights.write_bytes(bytes(data))
    changed = ac.base_model_identity(str(copy))
    assert changed.startswith("copy@sha256:") and not ac.same_base_model(one, changed)
    assert ac.base_model_identity("org/some-model") == "org/some-model"
    assert not ac.same_base_model(one, "org/some-model")
    assert not ac.same_base_model(None, one)


def test_module_is_light():
    code = ("import sys, hostkit_adapters.contract; "
            "print(','.join(m for m in ('torch', 'numpy', 'onnx', 'onnxruntime', 'peft', 'transformers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
