"""Serving on onnxruntime-genai: one og.Model, one og.Adapters, adapters checked before genai loads them.

The genai models are made here as ModelBuilder + ExtractAdapters would make them
(:func:`build_genai_model`): onnxruntime-genai's model builder (``create_model``) on the tiny
Llama with a PEFT adapter, then the LoRA initializers it writes
(``model.layers.N.attn.q_proj.lora_A.MatMul.weight``, scaling folded into B) turned into graph
inputs ``[in, lora_r]`` / ``[lora_r, out]`` with same-named zero-size defaults (what genai's
multi-LoRA needs), and the built-in adapter saved as an ``.onnx_adapter`` with contract metadata.
With ``precision="int4"`` the LoRA MatMuls are excluded from quantization (they stay float).
References: torch PEFT greedy decoding of the same token ids.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hostkit_extract_adapters.genai import GenaiSession
from hostkit_extract_adapters.signature import AdapterMismatch
from hostkit_extract_adapters.testing import make_peft_adapter, peft_greedy

PROMPT = "the capital of france is"
NEW_TOKENS = 12

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def lora_node_names(base_dir: Path, target_modules: list[str]) -> list[str]:
    """The builder's names of the LoRA MatMul nodes (``/model/layers.N/attn/q_proj/lora_A/MatMul``)."""
    layers = json.loads((Path(base_dir) / "config.json").read_text())["num_hidden_layers"]
    names = []
    for i in range(layers):
        for module in target_modules:
            block = "attn" if module in ATTN else "mlp"
            names += [f"/model/layers.{i}/{block}/{module}/lora_{k}/MatMul" for k in "AB"]
    return names


def run_builder(base_dir: Path, adapter_dir: Path | None, out_dir: Path, precision: str) -> Path:
    """onnxruntime-genai's model builder as it is (LoRA weights built in as initializers, float with int4)."""
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    options = []
    if adapter_dir is not None:
        options.append(f"adapter_path={adapter_dir}")
        if precision == "int4":
            config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
            names = lora_node_names(base_dir, list(config["target_modules"]))
            options.append("nodes_to_exclude=" + ",".join(names))
    args = (None, str(base_dir), str(out_dir), precision, "cpu", str(out_dir.parent / f"{out_dir.name}-cache"))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        create_model(*args, **parse_extra_options(*args, options))
    return out_dir


def build_genai_model(base_dir: Path, adapter_dir: Path, out_dir: Path, precision: str = "fp32") -> tuple[Path, Path]:
    """The genai folder with swappable LoRA inputs and the path of its own adapter's ``.onnx_adapter``."""
    import onnx
    from onnx import helper, numpy_helper

    from hostkit_adapters.contract import adapter_metadata, base_model_identity
    from hostkit_extract_adapters.weights import save_weights

    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    run_builder(base_dir, adapter_dir, out_dir, precision)
    model_file = out_dir / "model.onnx"
    model = onnx.load(str(model_file))
    own = {}
    for tensor in list(model.graph.initializer):
        if not tensor.name.endswith((".lora_A.MatMul.weight", ".lora_B.MatMul.weight")):
            continue
        array = numpy_helper.to_array(tensor)
        own[tensor.name] = array
        is_a = ".lora_A." in tensor.name
        model.graph.initializer.remove(tensor)
        empty = np.zeros((array.shape[0], 0) if is_a else (0, array.shape[1]), array.dtype)
        model.graph.initializer.append(numpy_helper.from_array(empty, tensor.name))
        shape = [array.shape[0], "lora_r"] if is_a else ["lora_r", array.shape[1]]
        model.graph.input.append(helper.make_tensor_value_info(
            tensor.name, helper.np_dtype_to_tensor_dtype(array.dtype), shape))
    assert own, f"{model_file}: the builder wrote no LoRA weights"
    identity = base_model_identity(str(base_dir))
    entry = model.metadata_props.add()
    entry.key, entry.value = "hostkit.base_model", identity
    (out_dir / "model.onnx.data").unlink()
    onnx.save(model, str(model_file), save_as_external_data=True, location="model.onnx.data")
    dtype = next(iter(own.values())).dtype.name
    adapter = save_weights(own, out_dir / "adapter_weights.onnx_adapter", "onnx_adapter",
                           adapter_metadata(config, base_model=identity, dtype=dtype))
    return out_dir, adapter


class GenaiCase:
    """The tiny Llama, two PEFT adapters made separately, and the genai fp32 model built with the first."""

    def __init__(self, root: Path, base_dir: Path):
        self.root = root
        self.base_dir = base_dir
        self.own_dir = make_peft_adapter(base_dir, root / "adapter-own", seed=1, r=4, lora_alpha=8)
        # "trained in a separate run": other rank, rsLoRA, per-module rank and alpha
        self.second_dir = make_peft_adapter(base_dir, root / "adapter-second", seed=2, r=8, lora_alpha=16,
                                            use_rslora=True, rank_pattern={"layers.1.self_attn.v_proj": 2},
                                            alpha_pattern={"q_proj": 4})
        self.folder, self.own_file = build_genai_model(base_dir, self.own_dir, root / "genai-fp32")
        self._expected: dict[tuple, list[int]] = {}

    def prompt_ids(self, session: GenaiSession) -> list[int]:
        return session.encode(PROMPT)

    def expected(self, which: str | None, ids: list[int], new_tokens: int = NEW_TOKENS) -> list[int]:
        key = (which, tuple(ids), new_tokens)
        if key not in self._expected:
            adapter = {None: None, "own": self.own_dir, "second": self.second_dir}[which]
            self._expected[key] = peft_greedy(self.base_dir, adapter, ids, new_tokens)
        return self._expected[key]


@pytest.fixture(scope="module")
def genai_case(tmp_path_factory, tiny_llama) -> GenaiCase:
    return GenaiCase(tmp_path_factory.mktemp("genai"), tiny_llama)


def truncate_at_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


@pytest.mark.slow
def test_one_model_serves_base_own_and_second_adapter_switched_per_request(genai_case):
    session = GenaiSession(genai_case.folder, threads=1)
    session.load_adapter("own", genai_case.own_file)
    session.load_adapter("second", genai_case.second_dir)  # a PEFT folder: converted to the builder's names
    ids = genai_case.prompt_ids(session)
    eos = int(session.tokenizer.eos_token_ids[0])
    outputs = {}
    for which in (None, "own", "second", None, "second", "own"):  # switched per request, one og.Model
        got = session.generate_ids(ids, adapter=which, max_new_tokens=NEW_TOKENS)
        assert got == truncate_at_eos(genai_case.expected(which, ids), eos), which
        outputs.setdefault(which, got)
    assert len({tuple(v) for v in outputs.values()}) == 3  # three different behaviours
    pieces = list(session.stream(PROMPT, adapter="second", max_new_tokens=NEW_TOKENS))
    assert 1 < len(pieces) <= NEW_TOKENS and all(isinstance(p, str) and p for p in pieces)
    assert session.generate(PROMPT, adapter="second", max_new_tokens=NEW_TOKENS) == "".join(pieces)


@pytest.mark.slow
def test_int4_base_with_float_lora_switches_like_the_builders_own_builds(genai_case, tmp_path):
    """int4 + swappable float LoRA == the builder's int4 build with that adapter built in, and == its
    int4 build without adapter when none is active (same quantized base: exact, token for token)."""
    import onnx

    folder, own_file = build_genai_model(genai_case.base_dir, genai_case.own_dir, tmp_path / "int4", "int4")
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    ops = {}
    for node in graph.node:
        ops.setdefault(node.op_type, []).append(node)
    lora_inputs = {n: i for i in graph.input for n in [i.name] if n.endswith(".MatMul.weight")}
    assert len(ops["MatMulNBits"]) == 15  # 14 projections + lm_head quantized
    assert {n.input[1] for n in ops["MatMul"]} == set(lora_inputs)  # the LoRA MatMuls stayed float
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in lora_inputs.values())

    baked = GenaiSession(run_builder(genai_case.base_dir, genai_case.own_dir, tmp_path / "int4-baked", "int4"))
    plain = GenaiSession(run_builder(genai_case.base_dir, None, tmp_path / "int4-base", "int4"))
    session = GenaiSession(folder, threads=1)
    session.load_adapter("own", own_file)
    session.load_adapter("second", genai_case.second_dir)
    rng = np.random.default_rng(0)
    for _ in range(4):
        ids = [1] + [int(i) for i in rng.integers(3, 500, size=6)]
        assert session.generate_ids(ids, adapter="own", max_new_tokens=8) == baked.generate_ids(ids, max_new_tokens=8)
        assert session.generate_ids(ids, adapter=None, max_new_tokens=8) == plain.generate_ids(ids, max_new_tokens=8)
    assert session.generate_ids(ids, adapter="second", max_new_tokens=8) != session.generate_ids(ids, max_new_tokens=8)
    fp32 = sum(p.stat().st_size for p in genai_case.folder.iterdir() if p.name.startswith("model.onnx"))
    int4 = sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("model.onnx"))
    assert int4 < 0.6 * fp32


@pytest.mark.slow
def test_mismatched_adapters_are_rejected_before_genai_loads_them(genai_case, tmp_path, cli):
    from hostkit.testing.tiny import build_tiny_llama
    from hostkit_extract_adapters.convert import convert_peft_adapter
    from hostkit_extract_adapters.weights import save_weights

    other_base = build_tiny_llama(tmp_path / "other-base", seed=7)  # same shapes, other weights
    other = make_peft_adapter(other_base, tmp_path / "other", seed=3, r=4, lora_alpha=8)
    wide_base = build_tiny_llama(tmp_path / "wide-base", hidden_size=96)
    wide = make_peft_adapter(wide_base, tmp_path / "wide", seed=3, r=4, lora_alpha=8)
    half = convert_peft_adapter(genai_case.own_dir, dtype="float16")
    fp16 = save_weights(half.weights, tmp_path / "fp16", "onnx_adapter", half.metadata)
    elsewhere = make_peft_adapter(genai_case.base_dir, tmp_path / "k-o", seed=4, r=4, lora_alpha=8,
                                  target_modules=["q_proj", "k_proj", "o_proj"])

    session = GenaiSession(genai_case.folder, threads=1)
    expected = {
        other: ["base model: the adapter was made for other-base@sha256:"],
        wide: ["4 weights: shape [96, 4], the model takes [64, lora_r] (an adapter for a model of other dimensions)",
               "2 weights: shape [4, 48], the model takes [lora_r, 32]",
               "base model: the adapter was made for wide-base@sha256:"],
        fp16: ["8 weights: dtype float16, the model takes float32 (convert with --dtype float32)"],
        elsewhere: ["layers.0.", "k_proj.lora_A", "layers.1.", "o_proj.lora_B", "not an adapter weight of the model",
                    "missing 4 of the model's 8 adapter weights: model.layers.0.attn.v_proj.lora_A.MatMul.weight"],
    }
    for source, lines in expected.items():
        with pytest.raises(AdapterMismatch) as info:
            session.load_adapter("x", source)
        problems = "\n".join(info.value.problems)
        for line in lines:
            assert line in problems, problems
    assert session.adapters == {}  # genai never saw them: the session serves on as before
    session.load_adapter("own", genai_case.own_file)
    ids = genai_case.prompt_ids(session)
    eos = int(session.tokenizer.eos_token_ids[0])
    assert session.generate_ids(ids, adapter="own") == truncate_at_eos(genai_case.expected("own", ids, 20), eos)

    code, output = cli("infer", str(genai_case.folder), "--adapter", f"other={other}", "--adapter", f"fp16={fp16}",
                       "--adapter", f"own={genai_case.own_file}", "--prompt", PROMPT)
    assert code == 2, output
    assert f"adapters do not fit {genai_case.folder}: 2 problems" in output
    assert "other: base model: the adapter was made for other-base@sha256:" in output
    assert "fp16: 8 weights: dtype float16" in output
    assert "->" not in output  # nothing ran


@pytest.mark.slow
def test_infer_command_on_a_genai_folder(genai_case, tmp_path, cli):
    session = GenaiSession(genai_case.folder)
    session.load_adapter("own", genai_case.own_file)
    session.load_adapter("second", genai_case.second_dir)
    prompts = [PROMPT, "hello world"]
    args = ["infer", str(genai_case.folder), "--adapter", f"own={genai_case.own_file}",
            "--adapter", f"second={genai_case.second_dir}", "--max-new-tokens", "8", "--threads", "1"]
    code, output = cli(*args, *sum((["--prompt", p] for p in prompts), []), "--json")
    assert code == 0, output
    rows = [json.loads(line) for line in output.strip().splitlines()]
    assert [(r["prompt"], r["adapter"]) for r in rows] == [(p, u) for p in prompts for u in ("none", "own", "second")]
    for row in rows:
        adapter = None if row["adapter"] == "none" else row["adapter"]
        assert row["completion"] == session.generate(row["prompt"], adapter=adapter, max_new_tokens=8)

    code, output = cli(*args, "--prompt", PROMPT, "--use", "second", "--stream")
    assert code == 0, output
    assert output == f"[second] {PROMPT!r} -> {session.generate(PROMPT, adapter='second', max_new_tokens=8)}\n"

    code, output = cli(*args, "--prompt", PROMPT, "--use", "own", "--chat", "--system", "be brief", "--json")
    assert code == 0, output
    chat_ids = session.encode(PROMPT, chat=True, system="be brief")
    templated = f"<|system|>be brief</s><|user|>{PROMPT}</s><|assistant|>"  # the tiny Llama's chat template
    assert chat_ids == [int(i) for i in session.tokenizer.encode(templated)]
    assert json.loads(output)["completion"] == session.generate(PROMPT, adapter="own", max_new_tokens=8,
                                                                chat=True, system="be brief")

    sampled = [cli(*args, "--prompt", PROMPT, "--use", "own", "--do-sample", "--top-k", "50", "--temperature",
                   "1.5", "--seed", str(seed), "--json")[1] for seed in (3, 3, 4)]
    assert sampled[0] == sampled[1]  # one seed, one sample
    texts = {json.loads(s)["completion"] for s in sampled}
    greedy = session.generate(PROMPT, adapter="own", max_new_tokens=8)
    assert len(texts) == 2 or greedy not in texts  # sampling, not greedy
