"""The plain-onnxruntime path of ``hostkit infer`` / ``AdapterSession`` on small graphs built here.

onnxruntime failures are one clear line naming the model, the adapter and the step (exit 1), the
trace only under ``--traceback``: the graphs fail in known ways, an embedding with fewer rows than
the tokenizer's vocabulary (a run-time ``Gather`` failure, as a wrong export gives) and an operator
onnxruntime does not know (a failure when the session is created). Then chat templates, streaming,
and the options that only onnxruntime-genai models take; and the CLI's start-up stays light.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hostkit_extract_adapters.infer import AdapterSession, InferenceError

HIDDEN = 8
MODULE = "model.layers.0.self_attn.q_proj"


def build_toy_lm(folder: Path, *, vocab: int, forced_token: int | None = None, unknown_op: bool = False) -> Path:
    """``logits = (E[ids] W + (E[ids] A) B) H + c`` with A, B adapter inputs with zero-size defaults, and a
    tokenizer saved next to it (its vocabulary is larger than ``vocab``, the rows of E).

    ``forced_token``: the logits get one more column per id up to it, and a bias that makes it the
    greedy choice, so generation produces an id that E does not have."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from hostkit.testing.tiny import build_tokenizer

    rng = np.random.default_rng(0)
    a_name, b_name = f"{MODULE}.lora_A.weight", f"{MODULE}.lora_B.weight"
    out_vocab = vocab if forced_token is None else forced_token + 1
    bias = np.zeros(out_vocab, np.float32)
    if forced_token is not None:
        bias[forced_token] = 1e4
    inits = [
        numpy_helper.from_array(rng.standard_normal((vocab, HIDDEN)).astype(np.float32), "embed"),
        numpy_helper.from_array(rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((HIDDEN, out_vocab)).astype(np.float32), "head"),
        numpy_helper.from_array(bias, "bias"),
        numpy_helper.from_array(np.zeros((HIDDEN, 0), np.float32), a_name),
        numpy_helper.from_array(np.zeros((0, HIDDEN), np.float32), b_name),
    ]
    nodes = [
        helper.make_node("Gather", ["embed", "input_ids"], ["h"]),
        helper.make_node("MatMul", ["h", "W"], ["base"]),
        helper.make_node("MatMul", ["h", a_name], ["xa"]),
        helper.make_node("MatMul", ["xa", b_name], ["xab"]),
        helper.make_node("Add", ["base", "xab"], ["q"]),
        helper.make_node("MatMul", ["q", "head"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], ["logits"]),
    ]
    if unknown_op:
        nodes.append(helper.make_node("NoSuchOperator", ["attention_mask"], ["unused"]))
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
              helper.make_tensor_value_info(a_name, TensorProto.FLOAT, [HIDDEN, "lora_r"]),
              helper.make_tensor_value_info(b_name, TensorProto.FLOAT, ["lora_r", HIDDEN])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", out_vocab])]
    model = helper.make_model(helper.make_graph(nodes, "toy-lm", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    build_tokenizer().save_pretrained(folder)
    return path


def save_adapter(path: Path, seed: int = 1, r: int = 2) -> Path:
    from hostkit_extract_adapters.weights import save_weights

    rng = np.random.default_rng(seed)
    weights = {f"{MODULE}.lora_A.weight": rng.standard_normal((HIDDEN, r)).astype(np.float32),
               f"{MODULE}.lora_B.weight": rng.standard_normal((r, HIDDEN)).astype(np.float32)}
    return save_weights(weights, path, "onnx_adapter", {})


@pytest.fixture(scope="module")
def small_vocab_model(tmp_path_factory) -> Path:
    return build_toy_lm(tmp_path_factory.mktemp("small-vocab"), vocab=8)


def test_run_failure_names_model_adapter_and_step(small_vocab_model, tmp_path):
    session = AdapterSession(small_vocab_model)
    session.load_adapter("own", save_adapter(tmp_path / "own.onnx_adapter"))
    ids = np.array([[1, 2, 3]], dtype=np.int64)
    ok = session.run({"input_ids": ids, "attention_mask": np.ones_like(ids)}, adapter="own")
    assert ok[0].shape == (1, 3, 8)
    bad = np.array([[1, 50, 3]], dtype=np.int64)  # row 50 of an 8-row embedding
    with pytest.raises(InferenceError) as info:
        session.run({"input_ids": bad, "attention_mask": np.ones_like(bad)}, adapter="own")
    error = info.value
    assert error.model == str(small_vocab_model) and error.adapter == "own" and error.step == "run"
    message = str(error)
    assert "\n" not in message
    assert str(small_vocab_model) in message and "adapter 'own'" in message and "Gather" in message
    assert type(error.cause).__module__.startswith("onnxruntime")  # the trace is kept for --traceback


def test_generation_failure_names_the_decoding_step(tmp_path):
    model = build_toy_lm(tmp_path / "forced", vocab=8, forced_token=20)
    session = AdapterSession(model)
    with pytest.raises(InferenceError) as info:  # the prompt fits; the first new token (20) does not
        session.generate_ids([1, 2, 3], adapter=None, max_new_tokens=4)
    assert info.value.adapter is None and "no adapter" in str(info.value)
    assert info.value.step == "decoding token 2 of 4"


def hostkit_process(*argv: str) -> tuple[int, str, str]:
    """``python -m hostkit ARGV`` in a process of its own: what a user sees, onnxruntime's C++ log included."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "hostkit", *argv], capture_output=True, text=True)
    return result.returncode, result.stdout, result.stderr


@pytest.mark.slow  # two hostkit processes that each import transformers and onnxruntime
def test_infer_command_prints_one_error_line_and_exits_1(small_vocab_model, tmp_path):
    adapter = save_adapter(tmp_path / "own.onnx_adapter")
    args = ("infer", str(small_vocab_model), "--adapter", f"own={adapter}", "--use", "own",
            "--prompt", "the capital of france is", "--max-new-tokens", "3")
    code, out, err = hostkit_process(*args)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("ERROR: "), err
    line = lines[0]
    assert str(small_vocab_model) in line and "adapter 'own'" in line and "prefill (" in line
    assert "indices element out of data bounds" in line

    code, out, err = hostkit_process(*args, "--traceback")
    assert code == 1
    assert "Traceback (most recent call last)" in err and "onnxruntime_pybind11_state.InvalidArgument" in err
    assert err.strip().splitlines()[-1] == line


def test_session_creation_failure_is_one_line(tmp_path):
    model = build_toy_lm(tmp_path / "unknown-op", vocab=600, unknown_op=True)
    with pytest.raises(InferenceError) as info:
        AdapterSession(model)
    assert info.value.step == "creating the onnxruntime session" and "NoSuchOperator" in str(info.value)
    code, out, err = hostkit_process("infer", str(model), "--prompt", "hello")
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and str(model) in lines[0], err
    assert "creating the onnxruntime session" in lines[0]


@pytest.fixture(scope="module")
def toy_lm(tmp_path_factory) -> Path:
    return build_toy_lm(tmp_path_factory.mktemp("toy-lm"), vocab=600)


def test_stream_and_chat_on_plain_onnxruntime(toy_lm, tmp_path):
    from transformers import AutoTokenizer

    session = AdapterSession(toy_lm)
    session.load_adapter("own", save_adapter(tmp_path / "own.onnx_adapter"))
    tokenizer = AutoTokenizer.from_pretrained(toy_lm.parent)
    ids = session.encode("hello world")
    assert ids == tokenizer("hello world")["input_ids"]
    new = session.generate_ids(ids, adapter="own", max_new_tokens=6, eos_token_id=tokenizer.eos_token_id)
    text = session.generate("hello world", adapter="own", max_new_tokens=6)
    assert text == tokenizer.decode(new, skip_special_tokens=True)
    pieces = list(session.stream("hello world", adapter="own", max_new_tokens=6))
    assert "".join(pieces) == text and all(pieces)

    chat = session.encode("hello world", chat=True, system="be brief")
    assert chat == tokenizer("<|system|>be brief</s><|user|>hello world</s><|assistant|>",
                             add_special_tokens=False)["input_ids"]  # the tiny tokenizer's chat template
    plain_chat = tokenizer("<|user|>hello world</s><|assistant|>", add_special_tokens=False)["input_ids"]
    new = session.generate_ids(plain_chat, max_new_tokens=4, eos_token_id=tokenizer.eos_token_id)
    assert session.generate("hello world", chat=True, max_new_tokens=4) == tokenizer.decode(new, skip_special_tokens=True)


def test_infer_stream_and_options_on_plain_onnxruntime(toy_lm, tmp_path, cli):
    adapter = save_adapter(tmp_path / "own.onnx_adapter")
    session = AdapterSession(toy_lm)
    session.load_adapter("own", adapter)
    expected = session.generate("hello world", adapter="own", max_new_tokens=5)
    code, output = cli("infer", str(toy_lm), "--adapter", f"own={adapter}", "--use", "own", "--prompt",
                       "hello world", "--max-new-tokens", "5", "--stream", "--threads", "1")
    assert code == 0, output
    assert output == f"[own] 'hello world' -> {expected}\n"

    code, output = cli("infer", str(toy_lm), "--prompt", "hi", "--do-sample", "--temperature", "0.5")
    assert code == 2
    assert output.strip().splitlines()[-1] == (
        f"ERROR: --do-sample, --temperature: sampling needs an onnxruntime-genai model folder (genai_config.json); "
        f"{toy_lm} runs on plain onnxruntime, which decodes greedily")
    code, output = cli("infer", str(toy_lm), "--prompt", "hi", "--system", "x", "--top-p", "1.5")
    assert code == 2 and "--top-p 1.5: must be in (0, 1]" in output and "--system needs --chat" in output


@pytest.mark.parametrize("argv", [["--help"], ["infer", "--help"]])
def test_cli_start_up_imports_neither_onnxruntime_nor_genai(argv):
    import subprocess
    import sys

    code = ("import sys\nfrom hostkit.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('LOADED=' + ','.join(m for m in ('onnxruntime', 'onnxruntime_genai', 'torch', 'transformers') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "LOADED=", result.stdout
