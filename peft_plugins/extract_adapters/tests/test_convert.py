"""``hostkit convert-adapters``: scaling rules, suffixes, refusals, int4, and the ``--model`` check."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hostkit_adapters.contract import ContractError
from hostkit_extract_adapters.convert import convert_peft_adapter, quantize_int4
from hostkit_extract_adapters.extract import extract_adapters
from hostkit_extract_adapters.infer import AdapterSession
from hostkit_extract_adapters.weights import load_weights



def _peft_tensors(path):
    from safetensors.numpy import load_file

    return load_file(str(path / "adapter_model.safetensors"))


@pytest.mark.parametrize("config, expected_scaling", [
    ({"r": 4, "lora_alpha": 8}, lambda m: 8 / 4),
    ({"r": 4, "lora_alpha": 8, "use_rslora": True}, lambda m: 8 / math.sqrt(4)),
    ({"r": 4, "lora_alpha": 8, "alpha_pattern": {"v_proj": 32}}, lambda m: (32 if "v_proj" in m else 8) / 4),
    ({"r": 4, "lora_alpha": 16, "use_rslora": True, "rank_pattern": {"layers.1.self_attn.q_proj": 2},
      "alpha_pattern": {"q_proj": 4}},
     lambda m: (4 if "q_proj" in m else 16) / math.sqrt(2 if "layers.1.self_attn.q_proj" in m else 4)),
])
def test_scaling_is_folded_into_b_per_module(tmp_path, toy, peft_adapter_dir, config, expected_scaling):
    ranks = {m: (2 if "layers.1.self_attn.q_proj" in m and config.get("rank_pattern") else 4) for m in toy.base}
    contract = toy.random_adapter(1, ranks=ranks)
    path = peft_adapter_dir(tmp_path / "adapter", contract, config)
    peft = _peft_tensors(path)
    converted = convert_peft_adapter(path)
    for module in toy.base:
        a = peft[f"base_model.model.{module}.lora_A.weight"]
        b = peft[f"base_model.model.{module}.lora_B.weight"]
        np.testing.assert_allclose(converted.weights[f"{module}.lora_A.weight"], a.T)
        np.testing.assert_allclose(converted.weights[f"{module}.lora_B.weight"], b.T * expected_scaling(module),
                                   rtol=1e-6)
    meta = converted.metadata
    assert meta["hostkit.r"] == "4" and json.loads(meta["hostkit.target_modules"]) == ["q_proj", "v_proj"]
    assert json.loads(meta["hostkit.rank_pattern"]) == config.get("rank_pattern", {})


@pytest.mark.parametrize("config, message", [
    ({"use_dora": True}, "DoRA adapters"),
    ({"peft_type": "LOHA"}, "not LoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"bias": "all"}, "bias"),
])
def test_refuses_what_the_contract_cannot_express(tmp_path, toy, peft_adapter_dir, cli, config, message):
    path = peft_adapter_dir(tmp_path / "adapter", toy.random_adapter(1), config)
    with pytest.raises(ContractError, match=message):
        convert_peft_adapter(path)
    code, output = cli("convert-adapters", "--adapter-path", str(path), "--output-path", str(tmp_path / "out"))
    assert code == 2, output
    assert "ERROR:" in output and message in output
    assert not list(tmp_path.glob("out*"))


def test_rank_disagreeing_with_config_is_refused(tmp_path, toy, peft_adapter_dir):
    path = peft_adapter_dir(tmp_path / "adapter", toy.random_adapter(1, ranks=4), {"r": 8})
    with pytest.raises(ContractError, match="has rank 4, adapter_config.json says r = 8"):
        convert_peft_adapter(path)


@pytest.mark.parametrize("fmt, suffix", [("onnx_adapter", ".onnx_adapter"), ("numpy", ".npz"),
                                         ("safetensors", ".safetensors")])
def test_output_suffix_is_appended_not_substituted(tmp_path, toy, peft_adapter_dir, cli, fmt, suffix):
    path = peft_adapter_dir(tmp_path / "adapter", toy.random_adapter(1), {})
    out = tmp_path / "my.adapter.v1"
    code, output = cli("convert-adapters", "-a", str(path), "-o", str(out), "--adapter-format", fmt)
    assert code == 0, output
    written = tmp_path / f"my.adapter.v1{suffix}"
    assert written.is_file(), output
    assert str(written) in output
    loaded = load_weights(written)
    assert loaded.metadata["hostkit.base_model"] == "toy-base"
    # the suffix is not doubled
    code, _ = cli("convert-adapters", "-a", str(path), "-o", str(written), "--adapter-format", fmt)
    assert code == 0 and not (tmp_path / f"my.adapter.v1{suffix}{suffix}").exists()


def test_float16(tmp_path, toy, peft_adapter_dir, cli):
    path = peft_adapter_dir(tmp_path / "adapter", toy.random_adapter(1), {})
    code, output = cli("convert-adapters", "-a", str(path), "-o", str(tmp_path / "a"), "--dtype", "float16",
                       "--adapter-format", "safetensors")
    assert code == 0, output
    loaded = load_weights(tmp_path / "a.safetensors")
    assert {a.dtype for a in loaded.weights.values()} == {np.dtype("float16")}
    assert loaded.metadata["hostkit.dtype"] == "float16"


@pytest.mark.parametrize("mode", ["symmetric", "asymmetric"])
def test_int4_layout_and_accuracy(tmp_path, toy, peft_adapter_dir, mode):
    path = peft_adapter_dir(tmp_path / "adapter", toy.random_adapter(1), {})
    converted = convert_peft_adapter(path)
    quant = quantize_int4(converted, block_size=16, mode=mode)
    name = "model.layers.0.self_attn.q_proj.lora_B"
    weight = converted.weights[f"{name}.weight"]  # [r=4, out=16]: K=4 rows -> one block of 16
    packed = quant.weights[f"{name}.quant.weight"]
    scales = quant.weights[f"{name}.quant.scale"]
    assert packed.shape == (16, 1, 8) and packed.dtype == np.uint8
    assert scales.shape == (16,)
    assert (f"{name}.quant.zero_point" in quant.weights) == (mode == "asymmetric")
    # dequantize and compare (low nibble first; symmetric zero point is 8)
    low, high = packed & 0x0F, packed >> 4
    q = np.stack([low, high], axis=-1).reshape(16, 16)[:, :4].astype(np.float32)
    if mode == "symmetric":
        zp = np.full((16, 1), 8.0)
    else:
        zps = quant.weights[f"{name}.quant.zero_point"]
        zp = (zps & 0x0F).astype(np.float32).reshape(16, 1)
    deq = ((q - zp) * scales.reshape(16, 1)).T
    assert np.abs(deq - weight).max() <= np.abs(weight).max() / 7 + 1e-6
    assert quant.metadata["hostkit.dtype"] == "int4"
    assert json.loads(quant.metadata["hostkit.quantization"])["block_size"] == 16


# -- --model: checked against the extracted model, packed or not ---------------------------


@pytest.mark.parametrize("options", [dict(), dict(pack_inputs=True), dict(make_inputs=False)],
                         ids=["inputs", "packed", "external"])
def test_converted_adapter_fits_the_model_and_matches_peft(tmp_path, toy, toy_input, peft_adapter_dir, cli, options):
    src = toy.build(tmp_path / "model.onnx", toy.random_adapter(1, ranks=4), base_model="toy-base")
    result = extract_adapters(src, tmp_path / "out", **options)
    second = toy.random_adapter(7, ranks=4)
    path = peft_adapter_dir(tmp_path / "second", second, {"r": 4, "lora_alpha": 16, "use_rslora": True})
    code, output = cli("convert-adapters", "-a", str(path), "-o", str(tmp_path / "second-w"), "--model",
                       str(result.model_path), "--adapter-format", "numpy")
    assert code == 0, output
    assert "fits" in output
    weights = load_weights(tmp_path / "second-w.npz").weights
    assert sorted(weights) == sorted(result.signature.slots)  # packed when the model is
    session = AdapterSession(result.model_path)
    session.load_adapter("second", tmp_path / "second-w.npz")
    np.testing.assert_allclose(session.run({"x": toy_input}, adapter="second")[0], toy.reference(toy_input, second),
                               rtol=1e-5, atol=1e-5)


def test_model_check_lists_all_mismatches_and_writes_nothing(tmp_path, toy, peft_adapter_dir, cli):
    src = toy.build(tmp_path / "model.onnx", toy.random_adapter(1, ranks=4), base_model="toy-base")
    result = extract_adapters(src, tmp_path / "out", make_inputs=False)  # rank fixed at 4
    bad = toy.random_adapter(2, ranks=8, modules=[m for m in toy.base if "q_proj" in m])
    path = peft_adapter_dir(tmp_path / "bad", bad, {"r": 8, "lora_alpha": 8, "target_modules": ["q_proj"],
                                                   "base_model_name_or_path": "another-base"})
    code, output = cli("convert-adapters", "-a", str(path), "-o", str(tmp_path / "bad-out"), "--model",
                       str(result.model_path), "--dtype", "float16")
    assert code == 2, output
    assert f"does not fit {result.model_path}" in output
    assert "base model: the adapter was made for another-base" in output
    assert "dtype float16, the model takes float32" in output
    assert "rank 8, the model's rank is fixed at 4" in output
    assert "missing 4 of the model's 8 adapter weights" in output
    assert not list(tmp_path.glob("bad-out*"))


def test_int4_with_model_is_refused(tmp_path, toy, peft_adapter_dir, cli):
    src = toy.build(tmp_path / "model.onnx", toy.random_adapter(1))
    result = extract_adapters(src, tmp_path / "out")
    path = peft_adapter_dir(tmp_path / "a", toy.random_adapter(1), {})
    code, output = cli("convert-adapters", "-a", str(path), "-o", str(tmp_path / "q"), "--quantize-int4",
                       "--model", str(result.model_path))
    assert code == 2 and "MatMulNBits" in output


def test_missing_adapter_folder(tmp_path, cli):
    code, output = cli("convert-adapters", "-a", str(tmp_path / "nope"), "-o", str(tmp_path / "x"))
    assert code == 2 and "no adapter_config.json" in output
