"""ModelBuilder on the tiny Llama: folders og.Model opens, float LoRA MatMuls over an int4 base,
weights equal to the PEFT adapter's (scaled), fp32 greedy tokens equal torch PEFT's, QLoRA exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hostkit import HfModel, PassError
from hostkit_model_builder.build import build_model, lora_matmul_nodes
from hostkit_model_builder.config import ModelBuilderConfig
from hostkit_model_builder.testing import GenaiModel

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime_genai")

RUN = """
[model]
type = "HfModel"
path = "{base}"
{adapter}
[[passes]]
type = "ModelBuilder"
{options}
[output]
dir = "out"
"""
NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float32",
       "bnb_4bit_use_double_quant": True}
#: fp32 graph (fused attention, other summation order) vs torch: relative to the logits' scale
REL_TOL = 1e-4


def _graph(path: str | Path):
    return onnx.load(str(path), load_external_data=False)


def _ops(model) -> dict[tuple[str, bool], int]:
    counts: dict[tuple[str, bool], int] = {}
    for node in model.graph.node:
        if "MatMul" in node.op_type:
            key = (node.op_type, "/lora_" in node.name)
            counts[key] = counts.get(key, 0) + 1
    return counts


def _torch_logits(base: Path, adapter: Path | None, ids: list[int], *, quantization: dict | None = None):
    """torch PEFT logits; with ``quantization``, over the base dequantized as MergeAdapterWeights does."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if quantization:
        from hostkit_merge_adapters.loading import load_base

        model, _ = load_base(HfModel(path=str(base), quantization=quantization))
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    with torch.no_grad():
        return model.eval()(input_ids=torch.tensor([ids])).logits[0].numpy()


def _torch_greedy(base: Path, adapter: Path | None, ids: list[int], n: int, *, quantization: dict | None = None):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if quantization:
        from hostkit_merge_adapters.loading import load_base

        model, _ = load_base(HfModel(path=str(base), quantization=quantization))
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(input_ids=torch.tensor([out])).logits[0, -1].argmax()))
            if out[-1] == model.generation_config.eos_token_id:  # genai stops there too
                break
    return out[len(ids):]


def _relative(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def test_int4_run_with_adapter(tiny_llama, builder_adapter, run_toml):
    """The run file path: int4 base (MatMulNBits), float LoRA MatMuls holding the PEFT weights, a folder og opens."""
    from hostkit_extract_adapters.convert import convert_peft_adapter
    from hostkit_adapters.dialects import to_genai

    result = run_toml(RUN.format(base=tiny_llama, adapter=f'adapter_path = "{builder_adapter}"',
                                 options='precision = "int4"\nsearch = {max_length = 64, top_k = 1}'))
    assert result.exit_code == 0, result.output
    assert "matmul_nbits_quantizer" not in result.output and "Saving " not in result.output  # builder chatter is logged
    handle = result.final_model()
    folder = Path(handle.path).parent
    for name in ("model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "builder.log"):
        assert (folder / name).is_file(), name
    assert handle.adapter_mode == "embedded" and handle.tokenizer_path == str(folder)
    model = _graph(handle.path)
    layers, linear = 2, 7
    assert _ops(model) == {("MatMulNBits", False): layers * linear + 1,  # + lm_head
                           ("MatMul", True): 2 * layers * linear}
    assert sorted(n.name for n in model.graph.node if "/lora_" in n.name and "MatMul" in n.op_type) == \
        sorted(lora_matmul_nodes(layers))
    # the graph's LoRA weights are the adapter's, renamed into the builder's dialect, scaling folded into B
    expected, problems = to_genai(convert_peft_adapter(builder_adapter).weights)
    assert problems == []
    full = onnx.load(str(handle.path))
    got = {i.name: onnx.numpy_helper.to_array(i) for i in full.graph.initializer if "lora_" in i.name}
    assert sorted(got) == sorted(expected) == sorted(handle.adapter_names)
    for name, value in expected.items():
        assert got[name].dtype == np.float32 and np.abs(got[name] - value).max() <= 1e-6 * max(1, np.abs(value).max()), name
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["hostkit.dialect"] == "genai" and metadata["hostkit.precision"] == "int4"
    assert metadata["hostkit.r"] == "8" and metadata["hostkit.base_model"] == handle.base_model
    genai_config = json.loads((folder / "genai_config.json").read_text())
    assert genai_config["search"]["max_length"] == 64 and genai_config["search"]["top_k"] == 1
    step = result.manifest["steps"][-1]
    assert step["notes"]["adapter_weights"] == 28 and step["metrics"]["model_size_mb"] > 0
    tokens = GenaiModel(folder).greedy([1, 86, 264, 259], 5)
    assert len(tokens) == 5


def test_fp32_greedy_and_logits_equal_torch_peft(tiny_llama, builder_adapter, prompt_ids, tmp_path):
    """fp32: og.Model's prompt logits == torch PEFT's within 1e-4 of their scale; greedy tokens identical."""
    deltas = {}
    for label, adapter in (("base", None), ("adapter", builder_adapter)):
        handle = HfModel(path=str(tiny_llama), adapter_path=str(adapter) if adapter else None)
        out = build_model(handle, ModelBuilderConfig(precision="fp32"), tmp_path / label)
        folder = Path(out.path).parent
        assert _ops(_graph(out.path)).get(("MatMulNBits", False), 0) == 0
        served = GenaiModel(folder)
        expected = _torch_logits(tiny_llama, adapter, prompt_ids)
        deltas[label] = _relative(served.prompt_logits(prompt_ids), expected)
        assert deltas[label] <= REL_TOL, (label, deltas)
        assert served.greedy(prompt_ids, 12) == _torch_greedy(tiny_llama, adapter, prompt_ids, 12), label
    # the adapter changes the model, so the comparison is not vacuous
    assert _relative(_torch_logits(tiny_llama, builder_adapter, prompt_ids), _torch_logits(tiny_llama, None, prompt_ids)) > 1e-2
    print("fp32 relative max |delta logits| vs torch:", deltas)


def test_qlora_base_is_built_dequantized(tiny_llama, builder_adapter, prompt_ids, tmp_path):
    """A 4-bit base (a QLoRA output): built over the exactly dequantized base, not the original float one."""
    pytest.importorskip("bitsandbytes")
    handle = HfModel(path=str(tiny_llama), adapter_path=str(builder_adapter), quantization=dict(NF4))
    out = build_model(handle, ModelBuilderConfig(precision="fp32"), tmp_path / "qlora")
    served = GenaiModel(Path(out.path).parent)
    got = served.prompt_logits(prompt_ids)
    expected = _torch_logits(tiny_llama, builder_adapter, prompt_ids, quantization=NF4)
    original = _torch_logits(tiny_llama, builder_adapter, prompt_ids)
    assert _relative(got, expected) <= REL_TOL
    assert _relative(got, original) > 10 * REL_TOL  # the original float base would be a different model
    assert served.greedy(prompt_ids, 12) == _torch_greedy(tiny_llama, builder_adapter, prompt_ids, 12, quantization=NF4)
    metadata = {p.key: p.value for p in _graph(out.path).metadata_props}
    assert metadata["hostkit.dequantized"] == "true"
    assert not (Path(out.path).parent / ".hostkit-build").exists()  # the float copy is removed


def test_quantize_adapter_and_merge(tiny_llama, builder_adapter, prompt_ids, tmp_path):
    handle = HfModel(path=str(tiny_llama), adapter_path=str(builder_adapter))
    quantized = build_model(handle, ModelBuilderConfig(quantize_adapter=True), tmp_path / "q")
    assert _ops(_graph(quantized.path)) == {("MatMulNBits", False): 15, ("MatMulNBits", True): 28}
    merged = build_model(handle, ModelBuilderConfig(precision="fp32", merge_adapter_weights=True), tmp_path / "m")
    assert merged.adapter_mode is None and merged.adapter_names == []
    assert not [i for i in _graph(merged.path).graph.initializer if "lora" in i.name]
    served = GenaiModel(Path(merged.path).parent)
    assert _relative(served.prompt_logits(prompt_ids), _torch_logits(tiny_llama, builder_adapter, prompt_ids)) <= REL_TOL


def test_adapters_the_builder_cannot_hold_are_refused(tiny_llama, tmp_path):
    from hostkit.testing.tiny import make_lora_adapter

    lm_head = make_lora_adapter(tiny_llama, tmp_path / "lm-head", target_modules=["q_proj", "lm_head"])
    with pytest.raises(PassError, match="lm_head: onnxruntime-genai's builder takes LoRA on the attention and MLP"):
        build_model(HfModel(path=str(tiny_llama), adapter_path=str(lm_head)), ModelBuilderConfig(), tmp_path / "o")
    dora = tmp_path / "dora"
    dora.mkdir()
    (dora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True}))
    with pytest.raises(PassError, match="DoRA.*merge_adapter_weights = true"):
        build_model(HfModel(path=str(tiny_llama), adapter_path=str(dora)), ModelBuilderConfig(), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_validation_lists_every_problem(tiny_llama, run_toml):
    options = ('precision = "fp16"\nquantize_adapter = true\nsearch = {max_lenght = 10, top_p = "high"}\n'
               'extra_options = {adapter_path = "x", fuse_qkv = false}')
    result = run_toml(RUN.format(base=tiny_llama, adapter="", options=options), command="validate")
    assert result.exit_code == 2, result.output
    for expected in ("passes[0] (ModelBuilder).extra_options.adapter_path: set by the pass",
                     "search.max_lenght: not a genai_config.json search option (did you mean max_length?)",
                     "search.top_p: expected a number or a boolean, got 'high'",
                     "quantize_adapter: only int4 graphs quantize MatMuls, the precision is fp16"):
        assert expected in result.output, result.output
    assert "fuse_qkv" not in result.output
    for precision in ("fp16", "bf16"):
        result = run_toml(RUN.format(base=tiny_llama, adapter="", options=f'precision = "{precision}"'), command="validate")
        assert result.exit_code == 2
        assert f"precision: {precision} graphs do not generate on onnxruntime's CPU provider" in result.output
    result = run_toml(RUN.format(base=tiny_llama, adapter="", options='precision = "bf16"\nexecution_provider = "cuda"'),
                      command="validate")
    assert result.exit_code == 0, result.output


def test_fp16_graph_for_a_gpu(tiny_llama, builder_adapter, tmp_path):
    """fp16 is built for GPU providers (built here, not run): weights and adapter metadata in float16."""
    out = build_model(HfModel(path=str(tiny_llama), adapter_path=str(builder_adapter)),
                      ModelBuilderConfig(precision="fp16", execution_provider="cuda"), tmp_path / "fp16")
    lora = [i for i in onnx.load(str(out.path)).graph.initializer if "lora_" in i.name]
    assert len(lora) == 28 and all(i.data_type == onnx.TensorProto.FLOAT16 for i in lora)
    metadata = {p.key: p.value for p in _graph(out.path).metadata_props}
    assert metadata["hostkit.dtype"] == "float16" and metadata["hostkit.precision"] == "fp16"
    genai_config = json.loads((Path(out.path).parent / "genai_config.json").read_text())
    assert "cuda" in json.dumps(genai_config["model"]["decoder"]["session_options"]["provider_options"])


def test_builder_options_reach_the_graph(tiny_llama, tmp_path):
    """exclude_lm_head, int4 block size / symmetry / accuracy level, and extra_options passthrough."""
    fused = _graph(build_model(HfModel(path=str(tiny_llama)), ModelBuilderConfig(precision="fp32"), tmp_path / "f").path)
    split = _graph(build_model(HfModel(path=str(tiny_llama)), ModelBuilderConfig(
        precision="fp32", exclude_lm_head=True, extra_options={"fuse_qkv": False}), tmp_path / "s").path)
    assert "logits" in [o.name for o in fused.graph.output] and "hidden_states" in [o.name for o in split.graph.output]
    assert "logits" not in [o.name for o in split.graph.output]
    names = lambda model: {n.name for n in model.graph.node if n.op_type == "MatMul"}  # noqa: E731
    assert "/model/layers.0/attn/qkv_proj/MatMul" in names(fused)
    assert {"/model/layers.0/attn/q_proj/MatMul", "/model/layers.0/attn/k_proj/MatMul"} <= names(split)
    int4 = _graph(build_model(HfModel(path=str(tiny_llama)), ModelBuilderConfig(
        int4_block_size=16, int4_is_symmetric=False, int4_accuracy_level=1), tmp_path / "q").path)
    node = next(n for n in int4.graph.node if n.op_type == "MatMulNBits")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["block_size"] == 16 and attrs["accuracy_level"] == 1
    assert len(node.input) >= 4 and node.input[3]  # asymmetric: a zero-point input



def test_asymmetric_int4_of_a_tied_embedding_model_loads(tmp_path, prompt_ids, run_toml):
    """onnxruntime-genai 0.18's builder gives a tied model's shared, asymmetric int4 embedding
    (GatherBlockQuantized with uint4 zero points) a graph onnxruntime cannot load; the pass keeps
    the embedding a float Gather and quantizes lm_head on its own, and says so in the notes."""
    from hostkit.testing.tiny import build_tiny_llama

    tied = build_tiny_llama(tmp_path / "tied", tie_word_embeddings=True)
    result = run_toml(RUN.format(base=tied, adapter="", options="int4_is_symmetric = false\nint4_accuracy_level = 1"))
    assert result.exit_code == 0, result.output
    handle = result.final_model()
    graph = _graph(handle.path).graph
    head = next(n for n in graph.node if n.op_type == "MatMulNBits" and "lm_head" in n.name)
    assert len(head.input) >= 4 and head.input[3]  # asymmetric: zero points
    assert "GatherBlockQuantized" not in {n.op_type for n in graph.node}
    assert "asymmetric" in result.manifest["steps"][-1]["notes"]["shared_embeddings"]
    logits = GenaiModel(Path(handle.path).parent).prompt_logits(prompt_ids)
    assert _relative(logits, _torch_logits(tied, None, prompt_ids)) < 0.1  # int4 weights: close to fp32


def _q4_1_valued_copy(base: Path, out: Path) -> Path:
    """``base`` with every decoder Linear weight replaced by Q4_1 values (as a model converted from a Q4_1 GGUF)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hostkit_model_builder.q4_1 import q4_1_blocks

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and "lm_head" not in name:
                module.weight.copy_(torch.from_numpy(q4_1_blocks(module.weight.numpy())[3]))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def test_q4_1_blocks_recover_q4_1_weights_exactly():
    from hostkit_model_builder.q4_1 import q4_1_blocks

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    once = q4_1_blocks(w)[3]
    assert np.abs(once - w).max() <= np.abs(w).max() / 15  # within a step of the 4-bit grid
    packed, scales, offsets, again = q4_1_blocks(once)
    assert np.abs(again - once).max() <= 1e-6 * np.abs(once).max()  # Q4_1 values come back as they are
    assert packed.shape == (8, 2, 16) and scales.shape == (16,) and offsets.shape == (8, 2)


def test_int4_scheme_q4_1_is_lossless_for_q4_1_weights(tiny_llama, builder_adapter, prompt_ids, tmp_path, run_toml):
    """A base whose weights are Q4_1 values (what hostkit-lora makes of a Q4_1 GGUF): int4_scheme = "q4_1"
    gives torch PEFT's logits up to the int8 LM head, the builder's own int4 does not."""
    base = _q4_1_valued_copy(tiny_llama, tmp_path / "q4_1-base")
    adapter = f'adapter_path = "{builder_adapter}"'
    q4_1 = run_toml(RUN.format(base=base, adapter=adapter, options='int4_scheme = "q4_1"\nint4_accuracy_level = 1'),
                    workdir=tmp_path / "q4_1")
    assert q4_1.exit_code == 0, q4_1.output
    rtn = run_toml(RUN.format(base=base, adapter=adapter, options="int4_accuracy_level = 1"), workdir=tmp_path / "rtn")
    assert rtn.exit_code == 0, rtn.output
    graph = _graph(q4_1.final_model().path)
    bits = sorted(onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "bits"))
                  for n in graph.graph.node if n.op_type == "MatMulNBits")
    assert bits == [4] * 2 * 7 + [8]  # 2 layers x 7 projections in int4, the LM head in int8
    assert sorted(n.name for n in graph.graph.node if n.op_type == "MatMul" and "/lora_" in n.name) == \
        sorted(lora_matmul_nodes(2))
    notes = q4_1.manifest["steps"][-1]["notes"]
    assert notes["int4_scheme"] == "q4_1" and notes["requantize_max_rel_error"] < 1e-2
    expected = _torch_logits(base, builder_adapter, prompt_ids)
    lossless = _relative(GenaiModel(Path(q4_1.final_model().path).parent).prompt_logits(prompt_ids), expected)
    requantized = _relative(GenaiModel(Path(rtn.final_model().path).parent).prompt_logits(prompt_ids), expected)
    assert lossless < 1e-2 and lossless < requantized / 3, (lossless, requantized)
