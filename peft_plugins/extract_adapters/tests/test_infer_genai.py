"""Serving on onnxruntime-genai: one og.Model, one og.Adapters, adapters checked before genai loads them.

The genai models are made as a run file makes them: the ModelBuilder pass (onnxruntime-genai's
builder on the tiny Llama with a PEFT adapter; int4 keeps the LoRA MatMuls float) and then
ExtractAdapters (the builder's LoRA weights become graph inputs with zero-size defaults, the own
adapter an ``.onnx_adapter``). References: torch PEFT greedy decoding of the same token ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hostkit import HfModel
from hostkit_extract_adapters.extract import extract_adapters
from hostkit_extract_adapters.genai import GenaiSession
from hostkit_extract_adapters.signature import AdapterMismatch
from hostkit_extract_adapters.testing import make_peft_adapter, own_and_second_adapters, peft_greedy
from hostkit_model_builder.build import build_model
from hostkit_model_builder.config import ModelBuilderConfig

PROMPT = "the capital of france is"
NEW_TOKENS = 12


def run_builder(base_dir: Path, adapter_dir: Path | None, out_dir: Path, precision: str) -> Path:
    """The ModelBuilder pass alone: the adapter (if any) built in, float LoRA MatMuls at int4."""
    handle = HfModel(path=str(base_dir), adapter_path=str(adapter_dir) if adapter_dir else None)
    return Path(build_model(handle, ModelBuilderConfig(precision=precision), out_dir).path).parent


def build_genai_model(base_dir: Path, adapter_dir: Path, out_dir: Path, precision: str = "fp32") -> tuple[Path, Path]:
    """ModelBuilder then ExtractAdapters: the genai folder with swappable LoRA inputs, and its own adapter file."""
    built = run_builder(base_dir, adapter_dir, out_dir / "built", precision)
    result = extract_adapters(built / "model.onnx", out_dir / "extracted", tokenizer_dir=built)
    return result.model_path.parent, result.weights_path


class GenaiCase:
    """The tiny Llama, two PEFT adapters made separately, and the genai fp32 model built with the first."""

    def __init__(self, root: Path, base_dir: Path):
        self.root = root
        self.base_dir = base_dir
        self.own_dir, self.second_dir = own_and_second_adapters(base_dir, root)
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

    baked = GenaiSession(folder.parent / "built")  # the builder's int4 graph with the adapter built in
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


@pytest.mark.slow
def test_infer_refuses_a_higher_rank_and_modules_only_hostkit_graphs_have(genai_case, tmp_path, cli):
    """A model extracted with a fixed rank (4) and an r = 8 adapter; LoRA on lm_head, which the
    builder's graphs do not have (hostkit's OnnxConversion graphs do): refused before genai runs."""
    from safetensors.numpy import load_file, save_file

    fixed = extract_adapters(genai_case.folder.parent / "built" / "model.onnx", tmp_path / "fixed",
                             dynamic_lora_r=False, tokenizer_dir=genai_case.folder.parent / "built")
    folder = fixed.model_path.parent
    lm_head = make_peft_adapter(genai_case.base_dir, tmp_path / "lm-head", seed=5, r=4, lora_alpha=8,
                                target_modules=["q_proj", "v_proj", "lm_head"])
    weights = load_file(str(lm_head / "adapter_model.safetensors"))
    save_file({k: v for k, v in weights.items() if "lora_" in k}, str(lm_head / "adapter_model.safetensors"))
    code, output = cli("infer", str(folder), "--adapter", f"second={genai_case.second_dir}",
                       "--adapter", f"head={lm_head}", "--adapter", f"own={fixed.weights_path}", "--prompt", PROMPT)
    assert code == 2, output
    assert f"adapters do not fit {folder}:" in output
    assert "second: " in output and "rank 8, the model's rank is fixed at 4" in output, output
    assert ("head: lm_head: onnxruntime-genai's builder takes LoRA on the attention and MLP projections of the "
            "decoder layers only") in output, output
    assert "own:" not in output and "->" not in output  # the own adapter fits; nothing ran

    code, output = cli("infer", str(folder), "--adapter", f"own={fixed.weights_path}", "--use", "own",
                       "--prompt", PROMPT, "--max-new-tokens", "4", "--json")
    assert code == 0, output
    session = GenaiSession(genai_case.folder)
    session.load_adapter("own", genai_case.own_file)
    assert json.loads(output)["completion"] == session.generate(PROMPT, adapter="own", max_new_tokens=4)


@pytest.mark.slow
def test_a_genai_failure_is_one_error_line(genai_case, tmp_path, cli):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(genai_case.folder, broken)
    config = json.loads((broken / "genai_config.json").read_text())
    config["model"]["decoder"]["session_options"]["no_such_option"] = 1
    (broken / "genai_config.json").write_text(json.dumps(config))
    code, output = cli("infer", str(broken), "--prompt", PROMPT)
    assert code == 1, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith(f"ERROR: {broken} with no adapter, creating the onnxruntime-genai model: "
                               "onnxruntime-genai failed: ")
    assert "no_such_option" in lines[0]
