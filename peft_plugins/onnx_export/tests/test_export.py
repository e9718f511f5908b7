"""OnnxConversion: onnxruntime == torch, adapter weights named and shaped by the contract, dynamic shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostkit import HfModel, PassError
from hostkit_adapters import contract as adapter_contract
from hostkit_onnx_export.config import OnnxConversionConfig
from hostkit_onnx_export.export import export_onnx

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

RUN = """
[model]
type = "HfModel"
path = "{base}"
{adapter}
[[passes]]
type = "OnnxConversion"
{options}
[output]
dir = "out"
"""


def _peft_logits(base_dir: Path, adapter: Path | None, batch) -> "torch.Tensor":
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    ids, mask, positions = batch
    with torch.no_grad():
        return model.eval()(input_ids=ids, attention_mask=mask, position_ids=positions).logits


def _ort_logits(path: Path, batch):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids, mask, positions = batch
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "position_ids"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    return session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                    "position_ids": positions.numpy()})[0]


def _unmasked_delta(got, expected, batch) -> float:
    mask = batch[1].numpy().astype(bool)
    return float(abs(got - expected.numpy())[mask].max())


def _check_adapter_graph(path: Path, adapter: Path) -> list[str]:
    """Every LoRA weight of the adapter file is an initializer named and shaped per the contract, B pre-scaled."""
    from safetensors.torch import load_file

    config = json.loads((adapter / "adapter_config.json").read_text())
    peft_weights = load_file(str(adapter / "adapter_model.safetensors"))
    graph = onnx.load(str(path))
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in graph.graph.initializer}
    names = []
    for key, value in peft_weights.items():
        name = adapter_contract.contract_name(key)
        kind = adapter_contract.weight_kind(name)
        scaling = adapter_contract.lora_scaling(config, name)
        expected = adapter_contract.to_contract_weight(value.numpy(), kind, scaling)
        assert name in initializers, f"{name} missing from the graph"
        got = initializers[name]
        assert got.shape == expected.shape, (name, got.shape, expected.shape)
        assert abs(got - expected).max() <= 1e-7, name
        names.append(name)
    # nothing with peft's own naming survives
    assert not [n for n in initializers if ".default." in n or n.startswith("base_model.")]
    # A and B feed MatMul directly (no Transpose, no Mul by the scaling left in the graph)
    consumers = {}
    for node in graph.graph.node:
        for inp in node.input:
            if inp in names:
                consumers.setdefault(inp, set()).add(node.op_type)
    assert all(ops == {"MatMul"} for ops in consumers.values()), consumers
    return names


@pytest.mark.slow
def test_unmerged_adapter_dynamo(tiny_llama, tiny_adapter, run_toml, padded_batch):
    """The default exporter, end to end through the host."""
    result = run_toml(RUN.format(base=tiny_llama, adapter=f'adapter_path = "{tiny_adapter}"',
                                 options="check_outputs = true"))
    assert result.exit_code == 0, result.output
    step = result.step(0)
    handle = step["output"]
    assert handle["type"] == "OnnxModel" and handle["adapter_mode"] == "embedded"
    assert handle["base_model"] == adapter_contract.base_model_identity(str(tiny_llama))
    path = Path(handle["path"])
    assert path.name == "model.onnx" and (path.parent / "tokenizer.json").is_file()
    assert Path(handle["tokenizer_path"]) == path.parent
    assert step["metrics"]["max_abs_logit_delta"] <= 1e-4

    names = _check_adapter_graph(path, tiny_adapter)
    assert sorted(handle["adapter_names"]) == sorted(names) and len(names) == 12

    delta = _unmasked_delta(_ort_logits(path, padded_batch), _peft_logits(tiny_llama, tiny_adapter, padded_batch),
                            padded_batch)
    assert delta <= 1e-4, delta
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    parsed = adapter_contract.read_metadata(meta)
    assert parsed["r"] == 4 and parsed["alpha"] == 8.0 and parsed["rank_pattern"] == {"v_proj": 2}
    assert parsed["target_modules"] == ["q_proj", "up_proj", "v_proj"]
    assert parsed["base_model"] == handle["base_model"]


def test_unmerged_adapter_torchscript_dynamic_shapes(tiny_llama, tiny_adapter, tmp_path, padded_batch):
    out = export_onnx(HfModel(path=str(tiny_llama), adapter_path=str(tiny_adapter)),
                      OnnxConversionConfig(exporter="torchscript"), tmp_path / "ts")
    path = Path(out.path)
    names = _check_adapter_graph(path, tiny_adapter)
    assert sorted(out.adapter_names) == sorted(names)
    graph = onnx.load(str(path))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    assert dims == {n: ["batch", "sequence"] for n in ("input_ids", "attention_mask", "position_ids")}

    expected = _peft_logits(tiny_llama, tiny_adapter, padded_batch)
    assert _unmasked_delta(_ort_logits(path, padded_batch), expected, padded_batch) <= 1e-4
    # other batch sizes and lengths than the export's sample (batch 2, 8 tokens)
    for batch, seq in ((1, 1), (3, 13)):
        ids = torch.randint(3, 500, (batch, seq))
        sample = (ids, torch.ones_like(ids), torch.arange(seq).expand(batch, seq).contiguous())
        delta = _unmasked_delta(_ort_logits(path, sample), _peft_logits(tiny_llama, tiny_adapter, sample), sample)
        assert delta <= 1e-4, (batch, seq, delta)


def test_merged_adapter_export(tiny_llama, tiny_adapter, tmp_path, padded_batch):
    out = export_onnx(HfModel(path=str(tiny_llama), adapter_path=str(tiny_adapter)),
                      OnnxConversionConfig(exporter="torchscript", merge_adapter_weights=True), tmp_path / "merged")
    assert out.adapter_mode is None and out.adapter_names == []
    graph = onnx.load(out.path)
    assert not [i.name for i in graph.graph.initializer if "lora" in i.name]
    expected = _peft_logits(tiny_llama, tiny_adapter, padded_batch)
    assert _unmasked_delta(_ort_logits(Path(out.path), padded_batch), expected, padded_batch) <= 1e-4


def test_base_model_export_and_external_data(tiny_llama, tmp_path, padded_batch):
    out = export_onnx(HfModel(path=str(tiny_llama)),
                      OnnxConversionConfig(exporter="torchscript", save_as_external_data=True), tmp_path / "base")
    data = Path(out.path).parent / "model.onnx.data"
    # the weights live in model.onnx.data (tensors under 1 KiB stay inline)
    assert data.is_file() and data.stat().st_size > 3 * Path(out.path).stat().st_size
    expected = _peft_logits(tiny_llama, None, padded_batch)
    assert _unmasked_delta(_ort_logits(Path(out.path), padded_batch), expected, padded_batch) <= 1e-4


def test_qlora_base_is_exported_dequantized(tiny_llama, tiny_adapter, tmp_path, padded_batch):
    """A 4-bit base: the graph computes the PEFT model over the dequantized 4-bit base (adapter kept apart).

    The reference is built explicitly from ``dequantize_4bit`` (see hostkit_merge_adapters.testing), so the
    test does not depend on the machine's 4-bit kernel (bf16 on AVX512-BF16 CPUs)."""
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel

    from hostkit_merge_adapters.testing import dequantized_reference, load_4bit, relative_delta

    nf4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float32"}
    out = export_onnx(HfModel(path=str(tiny_llama), adapter_path=str(tiny_adapter), quantization=nf4),
                      OnnxConversionConfig(exporter="torchscript"), tmp_path / "q")
    _check_adapter_graph(Path(out.path), tiny_adapter)
    model = PeftModel.from_pretrained(dequantized_reference(load_4bit(str(tiny_llama), nf4)), str(tiny_adapter)).eval()
    ids, mask, positions = padded_batch
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert relative_delta(torch.as_tensor(_ort_logits(Path(out.path), padded_batch)), expected, mask) <= 1e-5


def test_dora_is_refused_before_loading(tiny_llama, tmp_path):
    adapter = tmp_path / "dora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                             "use_dora": True}))
    with pytest.raises(PassError, match="DoRA.*merge_adapter_weights = true"):
        export_onnx(HfModel(path=str(tiny_llama), adapter_path=str(adapter)), OnnxConversionConfig(), tmp_path / "o")


def test_validation_problems(tiny_llama, run_toml):
    result = run_toml(RUN.format(base=tiny_llama, adapter="", options='target_opset = 17\nwith_past = true\n'
                                                                      'use_position_ids = false'), command="validate")
    assert result.exit_code == 2, result.output
    assert "passes[0] (OnnxConversion).target_opset: the dynamo exporter needs opset >= 18" in result.output
    assert "with_past: a KV-cache model needs use_position_ids = true" in result.output


@pytest.mark.parametrize("exporter", ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_with_past_greedy_matches_torch(tiny_llama, tiny_adapter, tmp_path, exporter):
    """KV-cache graph: greedy decoding from an empty cache, step by step, equals torch's full recompute."""
    import numpy as np
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = export_onnx(HfModel(path=str(tiny_llama), adapter_path=str(tiny_adapter)),
                      OnnxConversionConfig(exporter=exporter, with_past=True), tmp_path / exporter)
    assert len(out.adapter_names) == 12
    session = ort.InferenceSession(out.path, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert inputs[3:] == [f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert outputs == ["logits"] + [f"present.{i}.{kv}" for i in range(2) for kv in ("key", "value")]

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32),
                                      str(tiny_adapter)).eval()
    sequence = np.array([[1, 40, 50, 60, 70]], dtype=np.int64)
    new = sequence
    past = {name: np.zeros((1, 2, 0, 16), np.float32) for name in inputs[3:]}  # kv heads 2, head dim 16
    worst = 0.0
    for _ in range(4):
        total = sequence.shape[1]
        results = session.run(None, {"input_ids": new, "attention_mask": np.ones((1, total), np.int64),
                                     "position_ids": np.arange(total - new.shape[1], total)[None], **past})
        with torch.no_grad():
            expected = model(input_ids=torch.from_numpy(sequence)).logits[:, -new.shape[1]:].numpy()
        worst = max(worst, float(abs(results[0] - expected).max()))
        assert results[1].shape[2] == total  # present holds the whole sequence
        past = dict(zip(inputs[3:], results[1:]))
        new = results[0][:, -1].argmax(-1)[:, None]
        sequence = np.concatenate([sequence, new], axis=1)
    assert worst <= 1e-4, worst


def test_float16_export(tiny_llama, tiny_adapter, tmp_path, run_toml):
    """float16 weights (adapter included) and logits; onnxruntime CPU runs it close to torch's float16 model."""
    result = run_toml(RUN.format(base=tiny_llama, adapter=f'adapter_path = "{tiny_adapter}"',
                                 options='exporter = "torchscript"\ntorch_dtype = "float16"\ncheck_outputs = true'))
    assert result.exit_code == 0, result.output
    step = result.step(0)
    assert step["metrics"]["max_abs_logit_delta"] <= 1e-2
    graph = onnx.load(step["output"]["path"])
    lora = [i for i in graph.graph.initializer if i.name in step["output"]["adapter_names"]]
    assert len(lora) == 12 and {i.data_type for i in lora} == {onnx.TensorProto.FLOAT16}
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    meta = adapter_contract.read_metadata({p.key: p.value for p in graph.metadata_props})
    assert meta["dtype"] == "float16"
