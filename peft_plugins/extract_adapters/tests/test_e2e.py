"""End to end on the tiny Llama: PEFT adapters -> ONNX -> ExtractAdapters -> convert-adapters -> one session.

For one extracted model (make_inputs true, false, and pack_inputs true):
no adapter == the base model; its own adapter == the torch PEFT model; a
second adapter made separately (other rank, rsLoRA, rank and alpha patterns;
for the fixed rank of make_inputs = false, one of a lower rank) and converted
with ``convert-adapters --model`` == the torch PEFT model with that adapter;
all through one AdapterSession, switching per call.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from hostkit_extract_adapters.extract import extract_adapters
from hostkit_extract_adapters.infer import AdapterSession
from hostkit_extract_adapters.signature import AdapterMismatch

pytestmark = pytest.mark.slow
TOL = 1e-4

MODES = {
    "make_inputs": dict(make_inputs=True),
    "external": dict(make_inputs=False),
    "packed": dict(make_inputs=True, pack_inputs=True),
}


@pytest.mark.parametrize("mode", MODES)
def test_one_model_base_own_and_converted_second_adapter(tmp_path, llama_case, cli, mode):
    case = llama_case
    options = MODES[mode]
    result = extract_adapters(case.onnx_path, tmp_path / "extracted", save_format="onnx_adapter",
                              tokenizer_dir=case.base_dir, **options)
    second = tmp_path / "second.onnx_adapter"
    args = ["convert-adapters", "--adapter-path", str(case.second_dir), "--output-path", str(second),
            "--model", str(result.model_path)]
    if mode == "external":  # ranks are fixed at the own adapter's 4 there; the second has r = 8
        code, output = cli(*args)
        assert code == 2, output
        assert "rank 8, the model's rank is fixed at 4" in output
        args[2] = str(case.small_dir)  # r = 2 fits (zero-padded to 4, exact)
        code, output = cli(*args)
        assert code == 0, output
        second_dir, expected_second = second, case.expected["small"]
    else:
        code, output = cli(*args)
        assert code == 0, output
        second_dir, expected_second = second, case.expected["second"]

    session = AdapterSession(result.model_path)
    session.load_adapter("own", result.weights_path)
    session.load_adapter("second", second_dir)
    feed = case.feed()
    deltas = {}
    for adapter, expected in [(None, case.expected["base"]), ("own", case.expected["own"]),
                              ("second", expected_second), (None, case.expected["base"]),
                              ("own", case.expected["own"])]:
        logits = session.run(feed, adapter=adapter, output_names=["logits"])[0]
        delta = float(np.abs(logits - expected).max())
        deltas[adapter] = max(delta, deltas.get(adapter, 0.0))
        assert delta <= TOL, f"{mode} {adapter}: max |delta| = {delta}"
    # the adapters really change the output (the comparison is not vacuous)
    assert np.abs(case.expected["own"] - case.expected["base"]).max() > 1e-2
    assert np.abs(case.expected["second"] - case.expected["own"]).max() > 1e-2
    assert np.abs(case.expected["small"] - case.expected["own"]).max() > 1e-2
    if options.get("make_inputs"):
        assert session._sessions == {}  # one session served everything
    print(f"{mode}: max |logits - torch| = " + json.dumps(deltas))


def test_generate_matches_torch_greedy(llama_case, tmp_path, llama_tools):
    case = llama_case
    result = extract_adapters(case.onnx_path, tmp_path / "extracted", tokenizer_dir=case.base_dir)
    session = AdapterSession(result.model_path)
    session.load_adapter("second", case.second_dir)
    prompt_ids = session.tokenizer("the capital of france is")["input_ids"]
    for adapter, adapter_dir in ((None, None), ("second", case.second_dir)):
        ours = session.generate_ids(prompt_ids, adapter=adapter, max_new_tokens=5)
        assert ours == llama_tools.peft_greedy(case.base_dir, adapter_dir, prompt_ids, 5)
    assert isinstance(session.generate("the capital of france is", adapter="second", max_new_tokens=3), str)


def test_infer_command(llama_case, tmp_path, cli):
    case = llama_case
    result = extract_adapters(case.onnx_path, tmp_path / "extracted", pack_inputs=True, save_format="safetensors",
                              tokenizer_dir=case.base_dir)
    code, output = cli("infer", str(result.model_path), "--adapter", f"own={result.weights_path}",
                       "--adapter", f"second={case.second_dir}", "--prompt", "the capital of france is",
                       "--max-new-tokens", "4", "--json")
    assert code == 0, output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert [line["adapter"] for line in lines] == ["none", "own", "second"]
    session = AdapterSession(result.model_path)
    session.load_adapter("second", case.second_dir)
    assert lines[2]["completion"] == session.generate("the capital of france is", adapter="second", max_new_tokens=4)
    code, output = cli("infer", str(result.model_path), "--adapter", f"own={result.weights_path}",
                       "--prompt", "hello", "--prompt", "world", "--use", "own", "--use", "none",
                       "--max-new-tokens", "2")
    assert code == 0, output
    assert output.count("[own] 'hello'") == 1 and output.count("[none] 'world'") == 1


def test_mismatched_adapters_are_rejected_before_any_run(llama_case, tmp_path, cli, llama_tools):
    """Wrong rank family, missing module, fp16 vs fp32, different base: each listed, nothing run."""
    from hostkit.testing.tiny import build_tiny_llama

    case = llama_case
    result = extract_adapters(case.onnx_path, tmp_path / "extracted", make_inputs=False, save_format="numpy")
    other_base = build_tiny_llama(tmp_path / "other-base", seed=1)  # same shapes, other weights
    other = llama_tools.make_peft_adapter(other_base, tmp_path / "other-adapter", seed=3, r=8, lora_alpha=8,
                                          target_modules=["q_proj"])
    code, output = cli("convert-adapters", "-a", str(other), "-o", str(tmp_path / "other"), "--dtype", "float16",
                       "--model", str(result.model_path))
    assert code == 2, output
    for expected in ("base model: the adapter was made for other-base@sha256:",
                     "4 weights: dtype float16, the model takes float32 (convert with --dtype float32): "
                     "model.layers.0.self_attn.q_proj.lora_A.weight, model.layers.0.self_attn.q_proj.lora_B.weight",
                     "4 weights: rank 8, the model's rank is fixed at 4",
                     "missing 4 of the model's 8 adapter weights: model.layers.0.self_attn.v_proj.lora_A.weight"):
        assert expected in output, output
    assert not list(tmp_path.glob("other.*"))
    session = AdapterSession(result.model_path)
    with pytest.raises(AdapterMismatch) as info:
        session.load_adapter("other", other)
    assert any("base model" in p for p in info.value.problems)
    assert session._sessions == {} and session.adapters == {}


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_run_file_with_onnx_conversion(llama_case, tmp_path, run_toml, cli, exporter):
    """The real exporter (hostkit-onnx-export) feeding ExtractAdapters in one run file."""
    pytest.importorskip("hostkit_onnx_export")
    case = llama_case
    result = run_toml(f"""
[model]
type = "HfModel"
path = "{case.base_dir}"
adapter_path = "{case.own_dir}"

[[passes]]
type = "OnnxConversion"
exporter = "{exporter}"

[[passes]]
type = "ExtractAdapters"
pack_inputs = true

[output]
dir = "out"
""")
    assert result.exit_code == 0, result.output
    handle = result.final_model()
    assert handle.adapter_mode == "inputs" and handle.packed
    code, output = cli("convert-adapters", "-a", str(case.second_dir), "-o", str(tmp_path / "second"),
                       "--model", handle.path)
    assert code == 0, output
    session = AdapterSession(handle.path)
    session.load_adapter("own", handle.adapter_weights)
    session.load_adapter("second", tmp_path / "second.onnx_adapter")
    feed = case.feed()
    names = {i.name for i in session.session_for().get_inputs()}
    if "position_ids" in names:
        feed["position_ids"] = np.broadcast_to(np.arange(case.input_ids.shape[1]), case.input_ids.shape).astype(np.int64)
    for adapter, expected in ((None, "base"), ("own", "own"), ("second", "second"), (None, "base")):
        logits = session.run(feed, adapter=adapter, output_names=["logits"])[0]
        delta = float(np.abs(logits - case.expected[expected]).max())
        assert delta <= TOL, f"{exporter} {adapter}: {delta}"
    assert session.generate("the capital", adapter="second", max_new_tokens=2) is not None


def test_adapter_trained_in_a_separate_lora_run(llama_case, tmp_path, run_toml, cli):
    """A second adapter trained by hostkit-lora in its own run, converted with --model, == torch PEFT."""
    pytest.importorskip("hostkit_lora")
    from hostkit.testing.runs import run_toml as run_in

    from hostkit_extract_adapters.testing import peft_logits

    case = llama_case
    extracted = extract_adapters(case.onnx_path, tmp_path / "extracted", pack_inputs=True)
    words = "one two three four five six seven eight nine ten".split()
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(words[(i + k) % 10] for k in range(10))}) + "\n"
                            for i in range(16)))
    trained = run_in(f"""
[model]
type = "HfModel"
path = "{case.base_dir}"

[data.train]
type = "jsonl"
path = "{data}"
max_seq_len = 32

[[passes]]
type = "LoRA"
r = 8
alpha = 32
target_modules = ["q_proj", "v_proj"]
train_data_config = "train"
[passes.training_args]
max_steps = 3
per_device_train_batch_size = 4
learning_rate = 0.02

[output]
dir = "lora-run"
""", tmp_path / "lora")
    assert trained.exit_code == 0, trained.output
    adapter_dir = trained.final_model().adapter_path
    code, output = cli("convert-adapters", "-a", adapter_dir, "-o", str(tmp_path / "trained"), "--adapter-format",
                       "safetensors", "--model", str(extracted.model_path))
    assert code == 0, output
    expected = peft_logits(case.base_dir, adapter_dir, case.input_ids)
    assert np.abs(expected - case.expected["base"]).max() > 1e-3  # training moved the adapter off zero
    session = AdapterSession(extracted.model_path)
    session.load_adapter("own", extracted.weights_path)
    session.load_adapter("trained", tmp_path / "trained.safetensors")
    for adapter, want in (("trained", expected), ("own", case.expected["own"]), (None, case.expected["base"]),
                          ("trained", expected)):
        delta = float(np.abs(session.run(case.feed(), adapter=adapter, output_names=["logits"])[0] - want).max())
        assert delta <= TOL, f"{adapter}: {delta}"


def test_generate_with_a_kv_cache_graph(llama_case, tmp_path, run_toml, llama_tools):
    """OnnxConversion with_past = true: generation feeds the presents back, and still equals torch."""
    pytest.importorskip("hostkit_onnx_export")
    case = llama_case
    result = run_toml(f"""
[model]
type = "HfModel"
path = "{case.base_dir}"
adapter_path = "{case.own_dir}"

[[passes]]
type = "OnnxConversion"
exporter = "torchscript"
with_past = true

[[passes]]
type = "ExtractAdapters"

[output]
dir = "out"
""")
    assert result.exit_code == 0, result.output
    session = AdapterSession(result.final_model().path)
    assert session._kv_pairs(session.session_for())
    session.load_adapter("second", case.second_dir)
    prompt = session.tokenizer("the capital of france is")["input_ids"]
    for adapter, adapter_dir in ((None, None), ("second", case.second_dir)):
        cached = session.generate_ids(prompt, adapter=adapter, max_new_tokens=8)
        assert cached == session.generate_ids(prompt, adapter=adapter, max_new_tokens=8, use_cache=False)
        assert cached == llama_tools.peft_greedy(case.base_dir, adapter_dir, prompt, 8)
