"""ExtractAdapters and convert-adapters on ModelBuilder graphs, served by one og.Model + og.Adapters.

For the fp32 graph (where greedy tokens must equal torch PEFT's) and the int4 graph (float LoRA
MatMuls over MatMulNBits), unpacked and packed: the extracted folder stays genai-loadable, its
adapter inputs keep the builder's names with zero-size defaults, and no adapter / the model's own
adapter / a second adapter converted with ``convert-adapters --model`` (other rank, rsLoRA,
rank_pattern) give torch PEFT's logits and greedy tokens. Mismatched adapters are refused with
the list of problems.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hostkit import HfModel
from hostkit_extract_adapters.extract import ExtractError, extract_adapters
from hostkit_extract_adapters.signature import read_signature
from hostkit_model_builder.build import build_model
from hostkit_model_builder.config import ModelBuilderConfig
from hostkit_model_builder.testing import GenaiModel

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime_genai")

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
REL_TOL = 1e-4


def _torch(base: Path, adapter: Path | None):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval()


def _logits_and_greedy(model, ids: list[int], n: int) -> tuple[np.ndarray, list[int]]:
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].numpy()
        out = list(ids)
        for _ in range(n):
            out.append(int(model(input_ids=torch.tensor([out])).logits[0, -1].argmax()))
            if out[-1] == model.generation_config.eos_token_id:  # genai stops there too
                break
    return logits, out[len(ids):]


def _relative(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


class Case:
    def __init__(self, root: Path, base: Path, prompt_ids: list[int]):
        from hostkit.testing.tiny import make_lora_adapter

        self.root, self.base, self.ids = root, base, prompt_ids
        self.own = make_lora_adapter(base, root / "own", seed=11, r=8, lora_alpha=16, target_modules=ALL_LINEAR)
        self.second = make_lora_adapter(base, root / "second", seed=12, r=4, lora_alpha=8, use_rslora=True,
                                        target_modules=ALL_LINEAR, rank_pattern={"o_proj": 2},
                                        alpha_pattern={"down_proj": 3})
        self.expected = {name: _logits_and_greedy(_torch(base, adapter), prompt_ids, 10)
                         for name, adapter in (("none", None), ("own", self.own), ("second", self.second))}
        self._built: dict[str, Path] = {}

    def built(self, precision: str) -> Path:
        if precision not in self._built:
            out = build_model(HfModel(path=str(self.base), adapter_path=str(self.own)),
                              ModelBuilderConfig(precision=precision), self.root / f"built-{precision}")
            self._built[precision] = Path(out.path)
        return self._built[precision]


@pytest.fixture(scope="module")
def case(tmp_path_factory, tiny_llama, prompt_ids) -> Case:
    return Case(tmp_path_factory.mktemp("genai-extract"), tiny_llama, prompt_ids)


@pytest.mark.parametrize("pack_inputs", [False, True], ids=["unpacked", "packed"])
@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_extracted_builder_graph_serves_base_own_and_converted(case, cli, tmp_path, precision, pack_inputs):
    built = case.built(precision)
    result = extract_adapters(built, tmp_path / "x", pack_inputs=pack_inputs, tokenizer_dir=built.parent)
    folder = result.model_path.parent
    for name in ("model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "adapter_weights.onnx_adapter"):
        assert (folder / name).is_file(), name
    signature = read_signature(result.model_path)
    assert signature.dialect == "genai" and signature.mode == "inputs" and signature.optional
    assert signature.packed == pack_inputs and signature.dynamic_rank
    if not pack_inputs:
        assert "model.layers.0.attn.q_proj.lora_A.MatMul.weight" in signature.slots
    assert len(signature.contract_names()) == 2 * 2 * len(ALL_LINEAR)
    genai_config = json.loads((folder / "genai_config.json").read_text())
    assert genai_config["model"]["decoder"]["filename"] == "model.onnx"

    second = tmp_path / "second.onnx_adapter"
    code, output = cli("convert-adapters", "-a", str(case.second), "-o", str(second), "--model", str(result.model_path))
    assert code == 0, output
    served = GenaiModel(folder, {"own": result.weights_path, "second": second})
    deltas = {}
    for adapter in ("none", "own", "second", "none"):  # one og.Model, adapters switched per generator
        active = None if adapter == "none" else adapter
        logits, tokens = case.expected[adapter]
        deltas[adapter] = _relative(served.prompt_logits(case.ids, active), logits)
        if precision == "fp32":
            assert deltas[adapter] <= REL_TOL, (adapter, deltas)
            assert served.greedy(case.ids, 10, active) == tokens, adapter
    if precision == "int4":
        # int4 base: the extracted graph with its own adapter fed == the builder's graph with it built in
        built_in = GenaiModel(built.parent).prompt_logits(case.ids)
        assert _relative(served.prompt_logits(case.ids, "own"), built_in) <= 1e-5
        assert max(deltas.values()) < 0.5  # int4 of a random tiny model: close, not equal
    print(f"{precision} pack_inputs={pack_inputs}: relative max |delta logits| vs torch PEFT "
          + json.dumps({k: float(f"{v:.3g}") for k, v in deltas.items()}))


def test_builder_graphs_that_cannot_be_extracted(case, tiny_llama, tmp_path):
    with pytest.raises(ExtractError, match="takes adapters as inputs.*make_inputs = true"):
        extract_adapters(case.built("fp32"), tmp_path / "ext", make_inputs=False)
    quantized = build_model(HfModel(path=str(tiny_llama), adapter_path=str(case.own)),
                            ModelBuilderConfig(quantize_adapter=True), tmp_path / "q")
    with pytest.raises(ExtractError, match=r"LoRA MatMuls are int4 \(MatMulNBits\).*quantize_adapter = false"):
        extract_adapters(quantized.path, tmp_path / "ext2")


def test_mismatched_adapters_are_refused_with_their_problems(case, cli, tmp_path, tiny_llama):
    """Other base, fp16 vs fp32, a rank above a fixed rank, LoRA on a module only hostkit's graphs have."""
    from hostkit.testing.tiny import build_tiny_llama, make_lora_adapter

    fixed = extract_adapters(case.built("fp32"), tmp_path / "fixed", dynamic_lora_r=False)
    other_base = build_tiny_llama(tmp_path / "other-base", seed=1)
    other = make_lora_adapter(other_base, tmp_path / "other", r=16, lora_alpha=16, target_modules=ALL_LINEAR)
    code, output = cli("convert-adapters", "-a", str(other), "-o", str(tmp_path / "o"), "--dtype", "float16",
                       "--model", str(fixed.model_path))
    assert code == 2, output
    for expected in ("base model: the adapter was made for other-base@sha256:",
                     "28 weights: dtype float16, the model takes float32 (convert with --dtype float32)",
                     "rank 16, the model's rank is fixed at 8"):
        assert expected in output, output
    lm_head = make_lora_adapter(tiny_llama, tmp_path / "lm-head", target_modules=ALL_LINEAR + ["lm_head"])
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(lm_head / "adapter_model.safetensors"))  # peft also saves lm_head's base weight
    save_file({k: v for k, v in weights.items() if "lora_" in k}, str(lm_head / "adapter_model.safetensors"))
    code, output = cli("convert-adapters", "-a", str(lm_head), "-o", str(tmp_path / "l"), "--model",
                       str(fixed.model_path))
    assert code == 2, output
    assert "lm_head: onnxruntime-genai's builder takes LoRA on the attention and MLP projections" in output, output
    assert not list(tmp_path.glob("o.*")) and not list(tmp_path.glob("l.*"))


def test_hostkit_dialect_weights_fit_a_builder_graph(case, tmp_path):
    """An adapter converted for an OnnxConversion graph (hostkit names) maps onto the builder's names."""
    from hostkit_extract_adapters.convert import convert_peft_adapter

    result = extract_adapters(case.built("fp32"), tmp_path / "x")
    signature = read_signature(result.model_path)
    converted = convert_peft_adapter(case.second)
    assert all(".self_attn." in n or ".mlp." in n for n in converted.weights)
    fitted = signature.fit(converted.weights, converted.metadata)
    assert set(fitted) == set(signature.slots)
    np.testing.assert_array_equal(fitted["model.layers.1.attn.o_proj.lora_B.MatMul.weight"],
                                  converted.weights["model.layers.1.self_attn.o_proj.lora_B.weight"])


def _tiny_phi3(path: Path) -> Path:
    """A 2-layer Phi-3 (fused qkv_proj and gate_up_proj) with random weights and the tiny tokenizer."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    from hostkit.testing.tiny import build_tokenizer

    tokenizer = build_tokenizer(512)
    config = Phi3Config(vocab_size=max(512, len(tokenizer)), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        original_max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
                        tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Phi3ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_fused_projections_are_split_into_the_builders_modules(tmp_path, cli, prompt_ids):
    """Phi-3's fused qkv_proj / gate_up_proj: the builder splits them (shared A, B by columns), and so does
    convert-adapters --model for a second adapter; greedy tokens equal torch PEFT's."""
    from hostkit.testing.tiny import make_lora_adapter

    fused = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    base = _tiny_phi3(tmp_path / "phi3")
    own = make_lora_adapter(base, tmp_path / "own", seed=1, r=8, lora_alpha=16, target_modules=fused)
    second = make_lora_adapter(base, tmp_path / "second", seed=2, r=4, lora_alpha=4, use_rslora=True,
                               target_modules=fused, rank_pattern={"down_proj": 2})
    built = build_model(HfModel(path=str(base), adapter_path=str(own)), ModelBuilderConfig(precision="fp32"),
                        tmp_path / "built")
    assert "model.layers.1.attn.v_proj.lora_B.MatMul.weight" in built.adapter_names
    assert "model.layers.1.mlp.gate_proj.lora_A.MatMul.weight" in built.adapter_names
    result = extract_adapters(built.path, tmp_path / "x", pack_inputs=True, tokenizer_dir=Path(built.path).parent)
    second_file = tmp_path / "second.onnx_adapter"
    code, output = cli("convert-adapters", "-a", str(second), "-o", str(second_file), "--model", str(result.model_path))
    assert code == 0, output
    served = GenaiModel(result.model_path.parent, {"own": result.weights_path, "second": second_file})
    for name, adapter in (("none", None), ("own", own), ("second", second)):
        logits, tokens = _logits_and_greedy(_torch(base, adapter), prompt_ids, 10)
        active = None if adapter is None else name
        assert _relative(served.prompt_logits(prompt_ids, active), logits) <= REL_TOL, name
        assert served.greedy(prompt_ids, 10, active) == tokens, name
