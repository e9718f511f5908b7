"""ExtractAdapters on a small contract graph: every mode and format, checked against numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hostkit_extract_adapters.extract import ExtractError, extract_adapters, pack_groups
from hostkit_extract_adapters.infer import AdapterSession
from hostkit_extract_adapters.signature import AdapterMismatch, read_signature
from hostkit_extract_adapters.weights import load_weights

MODES = {
    "inputs": dict(make_inputs=True),
    "inputs-fixed-rank": dict(make_inputs=True, dynamic_lora_r=False),
    "inputs-required": dict(make_inputs=True, optional_inputs=False),
    "external": dict(make_inputs=False),
    "packed": dict(make_inputs=True, pack_inputs=True),
    "packed-external": dict(make_inputs=False, pack_inputs=True),
}


def run(session, x, adapter=None):
    return session.run({"x": x}, adapter=adapter)[0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("save_format", ["onnx_adapter", "numpy", "safetensors"])
def test_extracted_model_serves_base_own_and_second_adapter(tmp_path, toy, toy_input, mode, save_format):
    own = toy.random_adapter(1, ranks=4)
    src = toy.build(tmp_path / "src" / "model.onnx", own, base_model="toy@sha256:0123456789abcdef")
    result = extract_adapters(src, tmp_path / "out", save_format=save_format, **MODES[mode])
    session = AdapterSession(result.model_path)
    session.load_adapter("own", result.weights_path)
    second = toy.random_adapter(2, ranks=4 if mode in ("inputs-fixed-rank", "external", "packed-external") else 3)
    session.load_adapter("second", second)
    # one session, switching per call, in any order
    for adapter, weights in [(None, None), ("own", own), ("second", second), (None, None), ("own", own)]:
        np.testing.assert_allclose(run(session, toy_input, adapter), toy.reference(toy_input, weights),
                                   rtol=1e-5, atol=1e-5)
    if MODES[mode].get("make_inputs", True):
        assert len(session._sessions) == 0 and session._session is not None  # one session for everything


def test_onnx_adapter_is_activated_through_run_options(tmp_path, toy, toy_input):
    src = toy.build(tmp_path / "model.onnx", toy.random_adapter(1))
    result = extract_adapters(src, tmp_path / "out")
    session = AdapterSession(result.model_path)
    loaded = session.load_adapter("own", result.weights_path)
    assert loaded.run_options is not None and not loaded.feed


def test_outputs_and_metadata(tmp_path, toy):
    src = toy.build(tmp_path / "model.onnx", toy.random_adapter(1), base_model="toy@sha256:0123456789abcdef")
    result = extract_adapters(src, tmp_path / "out", save_format="safetensors")
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert names == {"model.onnx", "adapter_weights.safetensors"}
    loaded = load_weights(result.weights_path)
    assert loaded.metadata["hostkit.base_model"] == "toy@sha256:0123456789abcdef"
    assert loaded.metadata["hostkit.r"] == "4"
    assert json.loads(loaded.metadata["hostkit.target_modules"]) == ["q_proj", "v_proj"]
    assert loaded.metadata["hostkit.dtype"] == "float32"
    assert loaded.metadata["hostkit.producer"].startswith("hostkit ")
    assert "hostkit.alpha" not in loaded.metadata  # folded into B by the exporter; not invented here
    assert sorted(loaded.weights) == sorted(toy.random_adapter(1))
    # the base weights stay in the graph, the adapter weights do not
    import onnx

    model = onnx.load(str(result.model_path))
    inits = {t.name: t for t in model.graph.initializer}
    assert "model.layers.0.self_attn.q_proj.weight" in inits
    assert list(inits["model.layers.0.self_attn.q_proj.lora_A.weight"].dims) == [16, 0]  # zero-size default
    def dims(name: str) -> list:
        value = next(i for i in model.graph.input if i.name == name)
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    # one rank symbol per module, shared by its A and B (one symbol for all would claim equal ranks)
    assert dims("model.layers.0.self_attn.q_proj.lora_B.weight") == ["lora_r.model.layers.0.self_attn.q_proj", 16]
    assert dims("model.layers.0.self_attn.q_proj.lora_A.weight") == [16, "lora_r.model.layers.0.self_attn.q_proj"]
    assert dims("model.layers.1.self_attn.v_proj.lora_A.weight") == [16, "lora_r.model.layers.1.self_attn.v_proj"]


def test_onnx_adapter_sidecar_and_versions(tmp_path, toy):
    src = toy.build(tmp_path / "model.onnx", toy.random_adapter(1), base_model="toy@sha256:0123456789abcdef")
    result = extract_adapters(src, tmp_path / "out")
    loaded = load_weights(result.weights_path)
    assert (tmp_path / "out" / "adapter_weights.onnx_adapter.json").is_file()
    assert loaded.metadata["hostkit.base_model"] == "toy@sha256:0123456789abcdef"
    assert loaded.model_version not in (None, 0)


def test_external_model_does_not_open_alone(tmp_path, toy):
    import onnxruntime as ort

    src = toy.build(tmp_path / "model.onnx", toy.random_adapter(1))
    result = extract_adapters(src, tmp_path / "out", make_inputs=False)
    with pytest.raises(Exception, match="External data path|does not exist"):
        ort.InferenceSession(str(result.model_path))
    assert read_signature(result.model_path).mode == "external"


def test_packed_model_has_one_input_per_module_type(tmp_path, toy, toy_input):
    own = toy.random_adapter(1)
    src = toy.build(tmp_path / "model.onnx", own)
    result = extract_adapters(src, tmp_path / "out", pack_inputs=True, save_format="numpy")
    signature = result.signature
    assert sorted(signature.slots) == [
        "model.layers.self_attn.q_proj.lora_A.weight.packed", "model.layers.self_attn.q_proj.lora_B.weight.packed",
        "model.layers.self_attn.v_proj.lora_A.weight.packed", "model.layers.self_attn.v_proj.lora_B.weight.packed"]
    slot = signature.slots["model.layers.self_attn.q_proj.lora_A.weight.packed"]
    assert slot.shape == (2, 16, "lora_r.model.layers.self_attn.q_proj") and slot.members == (
        "model.layers.0.self_attn.q_proj.lora_A.weight", "model.layers.1.self_attn.q_proj.lora_A.weight")
    assert load_weights(result.weights_path).weights[slot.name].shape == (2, 16, 4)
    # an unpacked adapter is packed when loaded
    session = AdapterSession(result.model_path)
    other = toy.random_adapter(5, ranks=2)
    session.load_adapter("other", other)
    np.testing.assert_allclose(run(session, toy_input, "other"), toy.reference(toy_input, other), rtol=1e-5, atol=1e-5)


def test_mixed_ranks_pack_with_zero_padding(tmp_path, toy, toy_input):
    ranks = {m: r for m, r in zip(["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                                   "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"], [4, 2, 1, 4])}
    own = toy.random_adapter(3, ranks=ranks)
    src = toy.build(tmp_path / "model.onnx", own)
    for options in (dict(pack_inputs=True), dict(make_inputs=False), dict()):
        result = extract_adapters(src, tmp_path / f"out{len(options)}{options.get('make_inputs')}", **options)
        session = AdapterSession(result.model_path)
        session.load_adapter("own", result.weights_path)
        np.testing.assert_allclose(run(session, toy_input, "own"), toy.reference(toy_input, own), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(run(session, toy_input), toy.reference(toy_input), rtol=1e-5, atol=1e-5)


def test_peft_layout_behind_transpose_is_converted(tmp_path, toy, toy_input):
    own = toy.random_adapter(1)
    src = toy.build(tmp_path / "model.onnx", own, peft_layout=True)
    result = extract_adapters(src, tmp_path / "out")
    assert sorted(result.signature.slots) == sorted(own)
    session = AdapterSession(result.model_path)
    session.load_adapter("own", result.weights_path)
    np.testing.assert_allclose(run(session, toy_input, "own"), toy.reference(toy_input, own), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run(session, toy_input), toy.reference(toy_input), rtol=1e-5, atol=1e-5)


def test_graph_without_adapters_is_an_error(tmp_path, toy):
    src = toy.build(tmp_path / "model.onnx", {})
    with pytest.raises(ExtractError, match="no LoRA weights"):
        extract_adapters(src, tmp_path / "out")


def test_extracting_twice_is_an_error(tmp_path, toy):
    src = toy.build(tmp_path / "model.onnx", toy.random_adapter(1))
    result = extract_adapters(src, tmp_path / "out")
    with pytest.raises(ExtractError, match="already extracted"):
        extract_adapters(result.model_path, tmp_path / "again")


def test_pack_groups_orders_layers_numerically():
    names = [f"model.layers.{i}.mlp.up_proj.lora_A.weight" for i in (10, 2, 1)] + ["lm_head.lora_A.weight"]
    groups = pack_groups(names, {n: (8, 4) for n in names})
    assert groups == {"model.layers.mlp.up_proj.lora_A.weight.packed": [
        "model.layers.1.mlp.up_proj.lora_A.weight", "model.layers.2.mlp.up_proj.lora_A.weight",
        "model.layers.10.mlp.up_proj.lora_A.weight"]}


# -- mismatches are rejected before any run, with the full list ------------------------


@pytest.fixture
def extracted(tmp_path, toy):
    src = toy.build(tmp_path / "model.onnx", toy.random_adapter(1), base_model="toy@sha256:0123456789abcdef")
    return extract_adapters(src, tmp_path / "out")


def test_mismatch_lists_every_problem(extracted, toy):
    session = AdapterSession(extracted.model_path)
    bad = toy.random_adapter(2, modules=["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"])
    bad["model.layers.0.self_attn.q_proj.lora_B.weight"] = bad["model.layers.0.self_attn.q_proj.lora_B.weight"].astype(np.float16)
    bad["model.layers.1.self_attn.q_proj.lora_A.weight"] = np.zeros((32, 4), np.float32)  # another model's width
    bad["model.layers.0.self_attn.k_proj.lora_A.weight"] = np.zeros((16, 4), np.float32)  # a module the model lacks
    with pytest.raises(AdapterMismatch) as info:
        session.load_adapter("bad", bad, metadata={"hostkit.base_model": "other@sha256:fedcba9876543210"})
    text = str(info.value)
    problems = info.value.problems
    assert "base model: the adapter was made for other@sha256:fedcba9876543210" in text
    assert "model.layers.0.self_attn.q_proj.lora_B.weight: dtype float16, the model takes float32" in text
    assert "model.layers.1.self_attn.q_proj.lora_A.weight: shape [32, 4], the model takes [16, lora_r]" in text
    assert "model.layers.0.self_attn.k_proj.lora_A.weight: not an adapter weight of the model" in text
    assert "missing 4 of the model's 8 adapter weights" in text and "v_proj" in text
    assert len(problems) == 5
    assert "bad" not in session.adapters


def test_fixed_rank_rejects_a_larger_rank_and_pads_a_smaller(tmp_path, toy, toy_input):
    src = toy.build(tmp_path / "model.onnx", toy.random_adapter(1, ranks=4))
    result = extract_adapters(src, tmp_path / "out", make_inputs=False)
    session = AdapterSession(result.model_path)
    with pytest.raises(AdapterMismatch, match="rank 8, the model's rank is fixed at 4"):
        session.load_adapter("big", toy.random_adapter(2, ranks=8))
    small = toy.random_adapter(3, ranks=2)
    session.load_adapter("small", small)
    np.testing.assert_allclose(run(session, toy_input, "small"), toy.reference(toy_input, small), rtol=1e-5, atol=1e-5)


def test_a_and_b_of_different_rank_are_rejected(extracted, toy):
    session = AdapterSession(extracted.model_path)
    bad = toy.random_adapter(2)
    bad["model.layers.1.self_attn.v_proj.lora_B.weight"] = np.zeros((3, 16), np.float32)
    with pytest.raises(AdapterMismatch, match="v_proj: lora_A has rank 4 but lora_B has rank 3"):
        session.load_adapter("bad", bad)


def test_partial_adapter_only_when_allowed(extracted, toy, toy_input):
    session = AdapterSession(extracted.model_path)
    part = toy.random_adapter(2, modules=["model.layers.0.self_attn.q_proj"])
    with pytest.raises(AdapterMismatch, match="missing 6"):
        session.load_adapter("part", part)
    session.load_adapter("part", part, allow_partial=True)
    np.testing.assert_allclose(run(session, toy_input, "part"), toy.reference(toy_input, part), rtol=1e-5, atol=1e-5)


def test_two_adapters_with_disjoint_modules_combine_and_overlaps_are_refused(extracted, toy, toy_input):
    session = AdapterSession(extracted.model_path, allow_partial=True)
    q = toy.random_adapter(2, modules=[m for m in toy.base if "q_proj" in m])
    v = toy.random_adapter(3, modules=[m for m in toy.base if "v_proj" in m])
    session.load_adapter("q", q)
    session.load_adapter("v", v)
    session.load_adapter("all", toy.random_adapter(4))
    np.testing.assert_allclose(run(session, toy_input, ["q", "v"]), toy.reference(toy_input, {**q, **v}),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(AdapterMismatch, match="set by both 'q' and 'all'"):
        run(session, toy_input, ["q", "all"])
    with pytest.raises(ValueError, match="already loaded"):
        session.load_adapter("q", q)


def test_different_base_detected_from_onnx_adapter_model_version(tmp_path, toy):
    src = toy.build(tmp_path / "a" / "model.onnx", toy.random_adapter(1), base_model="toy@sha256:0123456789abcdef")
    first = extract_adapters(src, tmp_path / "out-a")
    src2 = toy.build(tmp_path / "b" / "model.onnx", toy.random_adapter(1), base_model="toy@sha256:aaaaaaaaaaaaaaaa")
    second = extract_adapters(src2, tmp_path / "out-b")
    (tmp_path / "out-a" / "adapter_weights.onnx_adapter.json").unlink()  # the sidecar got lost
    session = AdapterSession(second.model_path)
    with pytest.raises(AdapterMismatch, match="model_version"):
        session.load_adapter("a", first.weights_path)


@pytest.mark.parametrize("pack", [False, True])
def test_half_a_module_is_refused_even_when_partial(tmp_path, toy, pack):
    src = toy.build(tmp_path / "model.onnx", toy.random_adapter(1))
    result = extract_adapters(src, tmp_path / "out", pack_inputs=pack)
    session = AdapterSession(result.model_path, allow_partial=True)
    half = toy.random_adapter(2, modules=["model.layers.0.self_attn.q_proj"])
    del half["model.layers.0.self_attn.q_proj.lora_B.weight"]
    with pytest.raises(AdapterMismatch, match="q_proj: has lora_A but no lora_B"):
        session.load_adapter("half", half)
    if pack:
        packed = {"model.layers.self_attn.q_proj.lora_A.weight.packed": np.zeros((2, 16, 4), np.float32)}
        with pytest.raises(AdapterMismatch, match="given without model.layers.self_attn.q_proj.lora_B.weight.packed"):
            session.load_adapter("packed-half", packed)


@pytest.mark.parametrize("pack_inputs", [False, True])
def test_recorded_shapes_of_rank_carrying_values_are_dropped(tmp_path, toy, toy_input, pack_inputs):
    """Exporters record value_info such as ``x A: [batch, 4]``; with a symbolic rank that is stale
    (onnxruntime plans buffer reuse from it), so ExtractAdapters drops it and keeps the rest."""
    import onnx

    src = toy.build(tmp_path / "src" / "model.onnx", toy.random_adapter(1, ranks=4))
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    onnx.save(inferred, str(src))
    before = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    rank_shaped = sorted(n for n in before if n.startswith("xa") and n[2:].isdigit())
    assert rank_shaped and all(before[n] == ["batch", 4] for n in rank_shaped)
    result = extract_adapters(src, tmp_path / "out", pack_inputs=pack_inputs)
    after = {v.name for v in onnx.load(str(result.model_path)).graph.value_info}
    assert not after & set(rank_shaped)
    # (x A) B contracts the rank away: the shapes after it are kept
    assert {n for n in before if n.startswith(("xab", "base", "tanh", "h"))} <= after
    session = AdapterSession(result.model_path)
    np.testing.assert_allclose(run(session, toy_input), toy.reference(toy_input), rtol=1e-5, atol=1e-6)
