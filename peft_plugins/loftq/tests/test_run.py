"""LoftQ from a TOML run file on the tiny model, on this CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("bitsandbytes")
pytest.importorskip("peft")

from hostkit.testing.conformance import PassConformance  # noqa: E402

DATA = Path(__file__).parent / "data" / "train.jsonl"


RUN = """
[model]
type = "HfModel"
path = "{model}"

[data.train]
type = "jsonl"
path = "{data}"
text_field = "text"
max_seq_len = 32

[[passes]]
type = "LoftQ"
r = 4
alpha = 8
loftq_iter = {loftq_iter}
train_data_config = "train"
[passes.training_args]
max_steps = {max_steps}
per_device_train_batch_size = 4
logging_steps = 1
learning_rate = 0.001
seed = 0

[output]
dir = "out"
"""


def run_file(model: Path, loftq_iter: int = 1, max_steps: int = 2, extra: str = "") -> str:
    return RUN.format(model=model, data=DATA, loftq_iter=loftq_iter, max_steps=max_steps).replace(
        "[passes.training_args]", extra + "[passes.training_args]")


def texts(n: int) -> list[str]:
    return [json.loads(line)["text"] for line in DATA.read_text().splitlines()[:n]]


@pytest.mark.slow
def test_loftq_iter_1_runs_end_to_end_and_the_adapter_loads(tiny_llama, run_toml):
    import torch
    import transformers
    from peft import PeftModel

    result = run_toml(run_file(tiny_llama, loftq_iter=1, max_steps=3))
    assert result.exit_code == 0, result.output
    step = result.step(0)
    folder = result.output_dir / step["folder"]
    for name in ("model/config.json", "model/model.safetensors", "model/tokenizer.json", "loftq_init_adapter",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "loftq.json"):
        assert (folder / name).exists(), name
    out = step["output"]
    assert out["path"] == str(folder / "model") and out["adapter_path"] == str(folder / "adapter")
    assert out["quantization"]["bnb_4bit_quant_type"] == "nf4"
    assert out["quantization"]["bnb_4bit_use_double_quant"] is False
    metrics = step["metrics"]
    assert metrics["loftq_relative_error"] < metrics["loftq_nf4_relative_error"]
    assert len(metrics["train_loss"]) == 3
    # every linear layer but lm_head was LoftQ-initialised: 7 per layer, 2 layers
    assert step["notes"]["loftq_layers"] == 14

    # The output base loads in 4-bit exactly as the handle says, and the adapter loads on it.
    quant = transformers.BitsAndBytesConfig(**out["quantization"])
    base = transformers.AutoModelForCausalLM.from_pretrained(out["path"], quantization_config=quant,
                                                             dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out["path"])
    ids = tokenizer(["The capital of France is Paris."], return_tensors="pt")
    with torch.no_grad():
        plain = base(**ids).logits
        model = PeftModel.from_pretrained(base, out["adapter_path"])
        adapted = model(**ids).logits
    assert not torch.allclose(plain, adapted)
    # ... and on the full-precision master weights too
    full = transformers.AutoModelForCausalLM.from_pretrained(out["path"], dtype=torch.float32)
    with torch.no_grad():
        PeftModel.from_pretrained(full, out["adapter_path"])(**ids)


@pytest.mark.slow
def test_loftq_init_starts_closer_to_the_original_model_than_nf4(tiny_llama, run_toml):
    """Before training, nf4(model/) + the initial adapter approximates the original model better than nf4 alone."""
    import torch
    import transformers
    from peft import PeftModel

    result = run_toml(run_file(tiny_llama, loftq_iter=2, max_steps=1, extra="save_quant_config = false\n"))
    assert result.exit_code == 0, result.output
    step = result.step(0)
    folder = result.output_dir / step["folder"]
    assert json.loads((folder / "loftq.json").read_text())["loftq_iter"] == 2
    assert step["output"]["quantization"] is None  # later passes load model/ in full precision

    quant = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                            bnb_4bit_compute_dtype="float32")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(texts(4), return_tensors="pt", padding=True)
    load = transformers.AutoModelForCausalLM.from_pretrained
    # the 4-bit models as their dequantized float32 equivalents: independent of the CPU's 4-bit kernel
    from hostkit_merge_adapters.testing import dequantized_reference

    def load_nf4(path):
        return dequantized_reference(load(path, quantization_config=quant, dtype=torch.float32))

    with torch.no_grad():
        reference = load(tiny_llama, dtype=torch.float32)(**batch).logits
        nf4 = load_nf4(tiny_llama)(**batch).logits
        loftq = PeftModel.from_pretrained(load_nf4(folder / "model"), folder / "loftq_init_adapter")(**batch).logits
    # nf4 of the saved master weights is exactly the Q LoftQ chose (no second rounding)
    from bitsandbytes.functional import dequantize_4bit
    from safetensors.torch import load_file

    master = load_file(folder / "model" / "model.safetensors")
    quantized = load(folder / "model", quantization_config=quant, dtype=torch.float32)
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        weight = quantized.get_submodule(name).weight
        assert torch.equal(dequantize_4bit(weight.data, weight.quant_state), master[name + ".weight"]), name
    mask = batch["attention_mask"].bool()
    nf4_error = (nf4 - reference)[mask].norm()
    loftq_error = (loftq - reference)[mask].norm()
    assert loftq_error < nf4_error, (float(loftq_error), float(nf4_error))


class TestLoftQConformance(PassConformance):
    plugin_name = "loftq"
    pass_type = "LoftQ"
    valid_options = {"train_data_config": "train", "r": 4, "loftq_iter": 2, "compute_dtype": "float32"}
    invalid_options = [
        ({"loftq_iter": 0}, "loftq_iter"),
        ({"loftq_iter": 1.5}, "loftq_iter"),
        ({"compute_dtype": "int8"}, "compute_dtype"),
        ({"save_quant_config": "yes"}, "save_quant_config"),
        ({"quant_type": "fp4"}, "quant_type"),
        ({"target_modules": []}, "target_modules"),
    ]
    run_file = RUN.format(model="{tiny_llama}", data=DATA, loftq_iter=1, max_steps=1)


def test_validate_refuses_dora_and_a_quantized_input(tiny_llama, run_toml):
    text = run_file(tiny_llama, extra="use_dora = true\n").replace(
        'path = "%s"' % tiny_llama, 'path = "%s"\nquantization = {load_in_4bit = true}' % tiny_llama, 1)
    result = run_toml(text, command="validate")
    assert result.exit_code == 2, result.output
    assert "passes[0] (LoftQ).use_dora" in result.output or "use_dora" in result.output
    assert "already quantized" in result.output


def test_validate_accepts_the_example(tiny_llama, run_toml):
    result = run_toml(run_file(tiny_llama), command="validate")
    assert result.exit_code == 0, result.output
