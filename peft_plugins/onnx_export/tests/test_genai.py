"""OnnxConversion KV-cache graphs load in onnxruntime-genai (genai_config.json beside them).

Greedy tokens through og.Model equal torch PEFT's, for the graph with its adapter embedded and,
after ExtractAdapters, with adapters fed through og.Adapters (the own one and a second adapter
converted with convert-adapters --model, hostkit's names).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostkit import HfModel
from hostkit_onnx_export.config import OnnxConversionConfig
from hostkit_onnx_export.export import export_onnx

og = pytest.importorskip("onnxruntime_genai")
NEW_TOKENS = 8


def _greedy_og(folder: Path, ids: list[int], adapter_file: Path | None = None) -> list[int]:
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + NEW_TOKENS, do_sample=False)
    generator = og.Generator(model, params)
    if adapter_file is not None:
        adapters = og.Adapters(model)
        adapters.load(str(adapter_file), "a")
        generator.set_active_adapter(adapters, "a")
    generator.append_tokens(ids)
    out = []
    while not generator.is_done() and len(out) < NEW_TOKENS:
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def _greedy_torch(base: Path, adapter: Path | None, ids: list[int]) -> list[int]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    out = list(ids)
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            out.append(int(model(input_ids=torch.tensor([out])).logits[0, -1].argmax()))
            if out[-1] == model.generation_config.eos_token_id:  # genai stops there too
                break
    return out[len(ids):]


@pytest.mark.parametrize("exporter", ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_with_past_graph_is_genai_loadable(tiny_llama, tiny_adapter, tmp_path, exporter):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_llama)("the capital of france is")["input_ids"]
    out = export_onnx(HfModel(path=str(tiny_llama), adapter_path=str(tiny_adapter)),
                      OnnxConversionConfig(exporter=exporter, with_past=True), tmp_path / "past")
    folder = Path(out.path).parent
    config = json.loads((folder / "genai_config.json").read_text())
    decoder = config["model"]["decoder"]
    assert decoder["inputs"]["position_ids"] == "position_ids" and decoder["num_key_value_heads"] == 2
    assert config["search"]["past_present_share_buffer"] is False
    assert _greedy_og(folder, ids) == _greedy_torch(tiny_llama, tiny_adapter, ids)

    no_past = export_onnx(HfModel(path=str(tiny_llama)), OnnxConversionConfig(exporter="torchscript"), tmp_path / "plain")
    assert not (Path(no_past.path).parent / "genai_config.json").exists()


def test_extracted_with_past_graph_serves_adapters_through_genai(tiny_llama, tiny_adapter, tmp_path):
    from transformers import AutoTokenizer

    from hostkit.testing.tiny import make_lora_adapter
    from hostkit_extract_adapters.convert import convert_peft_adapter
    from hostkit_extract_adapters.extract import extract_adapters
    from hostkit_extract_adapters.signature import read_signature
    from hostkit_extract_adapters.weights import save_weights

    ids = AutoTokenizer.from_pretrained(tiny_llama)("the capital of france is")["input_ids"]
    out = export_onnx(HfModel(path=str(tiny_llama), adapter_path=str(tiny_adapter)),
                      OnnxConversionConfig(exporter="torchscript", with_past=True), tmp_path / "past")
    result = extract_adapters(out.path, tmp_path / "x", tokenizer_dir=Path(out.path).parent)
    folder = result.model_path.parent
    assert (folder / "genai_config.json").is_file()
    second = make_lora_adapter(tiny_llama, tmp_path / "second", seed=4, r=2, lora_alpha=4, use_rslora=True)
    converted = convert_peft_adapter(second)
    fitted = read_signature(result.model_path).fit(converted.weights, converted.metadata)
    second_file = save_weights(fitted, tmp_path / "second", "onnx_adapter", converted.metadata)
    assert _greedy_og(folder, ids) == _greedy_torch(tiny_llama, None, ids)
    assert _greedy_og(folder, ids, result.weights_path) == _greedy_torch(tiny_llama, tiny_adapter, ids)
    assert _greedy_og(folder, ids, second_file) == _greedy_torch(tiny_llama, second, ids)
    external = extract_adapters(out.path, tmp_path / "ext", make_inputs=False)
    assert not (external.model_path.parent / "genai_config.json").exists()  # onnxruntime sessions only
