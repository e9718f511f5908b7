"""QLoRA on this CPU: nf4 and fp4 with double quantization, from TOML, adapter on the 4-bit layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostkit.testing.conformance import PassConformance
from hostkit_lora.testing import lora_run

WORDS = "one two three four five six seven eight nine ten".split()


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):  # hostkit.testing's: 2 shared cores, one thread is 10-50x faster for tiny models
    yield


@pytest.fixture
def count_data(tmp_path: Path) -> Path:
    path = tmp_path / "count.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(WORDS[(i + k) % 10] for k in range(10))}) + "\n"
                            for i in range(32)))
    return path


def run_file(model: Path, data: Path, quant_type: str, extra: str = "") -> str:
    return lora_run(model, data, pass_type="QLoRA", r=8, max_seq_len=32, max_steps=4, save_steps=None, batch=4,
                    options=f'quant_type = "{quant_type}"\ndouble_quant = true\n{extra}',
                    training_args="learning_rate = 0.005")


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_qlora_trains_on_a_4bit_base_on_cpu(tiny_llama, count_data, run_toml, quant_type):
    import peft
    import torch
    import transformers

    result = run_toml(run_file(tiny_llama, count_data, quant_type))
    assert result.exit_code == 0, result.output
    step = result.step(0)
    handle = result.final_model()
    expected = {"load_in_4bit": True, "bnb_4bit_quant_type": quant_type, "bnb_4bit_use_double_quant": True,
                "bnb_4bit_compute_dtype": "float32"}
    assert handle.quantization == expected and step["notes"]["quantization"] == expected
    assert step["notes"]["quantized_forward"] == "dequantize + matmul in float32"
    # every linear layer of the decoder is 4-bit and adapted (lm_head stays full precision)
    linear = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert step["notes"]["quantized_modules"] == linear and step["notes"]["target_modules"] == linear
    assert len(step["metrics"]["train_loss"]) == 4 and (result.output_dir / "01-qlora" / "loss.png").exists()

    # the output handle says how to load the base: 4-bit again, with the adapter on Linear4bit layers
    base = transformers.AutoModelForCausalLM.from_pretrained(
        handle.path, quantization_config=transformers.BitsAndBytesConfig(**handle.quantization), dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, handle.adapter_path)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q_proj.base_layer).__name__ == "Linear4bit"
    assert q_proj.base_layer.weight.quant_state.quant_type == quant_type
    assert float(q_proj.lora_B["default"].weight.abs().sum()) > 0  # trained away from its zero init
    with torch.no_grad():
        logits = model(torch.tensor([[1, 20, 30]])).logits
    assert torch.isfinite(logits).all()


def test_save_quant_config_false_gives_a_plain_lora_handle(tiny_llama, count_data, run_toml):
    result = run_toml(run_file(tiny_llama, count_data, "nf4", extra="save_quant_config = false\ntarget_modules = [\"q_proj\"]"))
    assert result.exit_code == 0, result.output
    assert result.final_model().quantization is None
    assert result.step(0)["notes"]["target_modules"] == ["q_proj"]  # a user's list is honoured (Olive overrides it)


def test_an_already_quantized_input_is_refused_at_validation(tiny_llama, count_data, run_toml):
    text = run_file(tiny_llama, count_data, "nf4").replace(
        'path = "%s"\n' % tiny_llama, 'path = "%s"\nquantization = { load_in_4bit = true }\n' % tiny_llama, 1)
    result = run_toml(text, command="validate")
    assert result.exit_code == 2
    assert "passes[0] (QLoRA).model.quantization: the input model is already quantized" in result.output


class TestQLoRAConformance(PassConformance):
    plugin_name = "qlora"
    pass_type = "QLoRA"
    valid_options = {"train_data_config": "train", "quant_type": "fp4", "double_quant": True,
                     "compute_dtype": "float32", "r": 4}
    invalid_options = [({"quant_type": "int4"}, "quant_type"), ({"double_quant": "yes"}, "double_quant"),
                       ({"compute_dtype": "float8"}, "compute_dtype"), ({"r": -1}, "r")]
    run_file = '''
    [model]
    type = "HfModel"
    path = "{tiny_llama}"
    [data.train]
    type = "text"
    path = "{tiny_llama}/tokenizer.json"
    max_samples = 8
    max_seq_len = 16
    [[passes]]
    type = "QLoRA"
    r = 2
    train_data_config = "train"
    [passes.training_args]
    max_steps = 2
    [output]
    dir = "out"
    '''


def test_a_quantized_load_lets_go_of_the_mmapped_checkpoint(tiny_llama, tmp_path):
    """transformers keeps unquantized tensors as views of the mmapped fp32 file; hostkit copies them out."""
    import gc
    import shutil

    # a private copy: other tests of this process may still hold models mapped from the shared folder
    tiny_llama = Path(shutil.copytree(tiny_llama, tmp_path / "private-tiny-llama"))

    import torch
    import transformers
    from hostkit_lora.training import release_checkpoint_file

    def mapped() -> bool:
        return any(str(tiny_llama) in line for line in Path("/proc/self/maps").read_text().splitlines())

    config = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                             bnb_4bit_compute_dtype=torch.float32)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama, quantization_config=config, dtype=torch.float32)
    gc.collect()
    assert mapped()  # the plain load keeps the checkpoint file mapped
    ids = torch.tensor([[1, 20, 30, 40]])
    with torch.no_grad():
        before = model(ids).logits
    tied_before = model.lm_head.weight is model.model.embed_tokens.weight
    release_checkpoint_file(model)
    gc.collect()
    assert not mapped()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied_before
