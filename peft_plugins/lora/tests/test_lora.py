"""The LoRA pass end to end on the tiny Llama: from a TOML run file to a PEFT adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostkit.testing.conformance import PassConformance
from hostkit_lora.testing import run_file


def test_adapter_loads_in_peft_and_changes_the_logits(tiny_llama, data_dir, run_toml):
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    result = run_toml(run_file(tiny_llama, data_dir, passes='''
[[passes]]
type = "LoRA"
r = 4
train_data_config = "train"
[passes.training_args]
max_steps = 4
per_device_train_batch_size = 4
learning_rate = 0.01
'''))
    assert result.exit_code == 0, result.output
    step = result.step(0)
    handle = result.final_model()
    adapter = Path(handle.adapter_path)
    assert adapter == result.output_dir / "01-lora" / "adapter"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    assert handle.path == str(tiny_llama) and handle.quantization is None
    assert [s for s, _ in step["metrics"]["train_loss"]] == [1, 2, 3, 4]
    assert (result.output_dir / "01-lora" / "loss.png").stat().st_size > 1000
    assert not (result.output_dir / "01-lora" / "checkpoints").exists()  # dropped after success
    assert step["notes"]["torch_dtype"] == "float32"  # the CPU default
    assert step["notes"]["target_modules"] == ["q_proj", "v_proj"]  # peft's Llama default

    ids = torch.tensor([[1, 20, 30, 40, 50]])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        before = base(ids).logits
        tuned = peft.PeftModel.from_pretrained(base, str(adapter))
        after = tuned(ids).logits
    assert tuned.peft_config["default"].r == 4
    assert not torch.allclose(before, after, atol=1e-4)


@pytest.mark.slow
def test_loss_falls_on_a_learnable_pattern(tiny_llama, data_dir, run_toml):
    tables = f'''
[data.train]
type = "jsonl"
path = "{data_dir / 'count.jsonl'}"
max_seq_len = 64
packing = "join"
[data.eval]
type = "jsonl"
path = "{data_dir / 'count.jsonl'}"
max_samples = 8
max_seq_len = 16
'''
    result = run_toml(run_file(tiny_llama, data_dir, data_tables=tables, passes='''
[[passes]]
type = "LoRA"
r = 16
alpha = 32
target_modules = "all-linear"
modules_to_save = ["lm_head"]
train_data_config = "train"
eval_data_config = "eval"
[passes.training_args]
max_steps = 40
per_device_train_batch_size = 4
learning_rate = 0.005
logging_steps = 5
'''))
    assert result.exit_code == 0, result.output
    metrics = result.step(0)["metrics"]
    losses = [v for _, v in metrics["train_loss"]]
    assert len(losses) == 8
    assert losses[-1] < 0.5 * losses[0], losses
    evals = [v for _, v in metrics["eval_loss"]]
    assert evals[-1] < 0.5 * evals[0] and metrics["final_eval_loss"] == evals[-1]


def test_text_classification(tiny_llama, data_dir, run_toml):
    import peft
    import torch
    from transformers import AutoModelForSequenceClassification

    tables = f'''
[data.train]
type = "jsonl"
path = "{data_dir / 'sentiment.jsonl'}"
text_field = "review"
label_field = "label"
labels = ["negative", "positive"]
max_seq_len = 16
'''
    result = run_toml(run_file(tiny_llama, data_dir, data_tables=tables, task="text-classification", passes='''
[[passes]]
type = "LoRA"
r = 8
train_data_config = "train"
[passes.training_args]
max_steps = 6
per_device_train_batch_size = 8
learning_rate = 0.01
'''))
    assert result.exit_code == 0, result.output
    handle = result.final_model()
    assert handle.num_labels == 2 and result.step(0)["notes"]["labels"] == ["negative", "positive"]
    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=2, pad_token_id=2)
    model = peft.PeftModel.from_pretrained(base, handle.adapter_path)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 30, 31, 32]])).logits
    assert logits.shape == (1, 2)
    # the classification head was trained and saved with the adapter (peft adds `score` for SEQ_CLS)
    assert any("score" in n for n, _ in model.named_parameters() if "modules_to_save" in n)


def test_data_errors_name_the_data_config_and_field(tiny_llama, data_dir, run_toml):
    tables = f'''
[data.train]
type = "jsonl"
path = "{data_dir / 'qa.jsonl'}"
text_template = "{{question}} -> {{reply}}"
'''
    result = run_toml(run_file(tiny_llama, data_dir, data_tables=tables,
                               passes='[[passes]]\ntype = "LoRA"\ntrain_data_config = "train"'))
    assert result.exit_code == 1
    assert "data.train.text_template: no column 'reply' (columns: question, answer)" in result.output
    assert "passes[0] (LoRA)" in result.output and "hostkit-lora" in result.output

    tables = f'''
[data.train]
type = "jsonl"
path = "{data_dir / 'qa.jsonl'}"
text_field = "body"
'''
    result = run_toml(run_file(tiny_llama, data_dir, data_tables=tables,
                               passes='[[passes]]\ntype = "LoRA"\ntrain_data_config = "train"'))
    assert result.exit_code == 1 and "data.train.text_field: no column 'body'" in result.output


def test_validate_reports_training_arg_typos_and_gpu_needs(tiny_llama, data_dir, run_toml, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    result = run_toml(run_file(tiny_llama, data_dir, passes='''
[[passes]]
type = "LoRA"
train_data_config = "train"
torch_dtype = "float16"
[passes.training_args]
learnin_rate = 0.001
fp16 = true
'''), command="validate")
    assert result.exit_code == 2, result.output
    out = result.output
    assert "passes[0] (LoRA).training_args.learnin_rate: unknown key (did you mean 'learning_rate'?)" in out
    assert "passes[0] (LoRA).training_args.fp16: fp16 mixed precision needs a CUDA GPU" in out
    assert "passes[0] (LoRA).torch_dtype: float16 trains with fp16 mixed precision, which needs a CUDA GPU" in out


def test_classification_data_needs_a_label_field(tiny_llama, data_dir, run_toml):
    result = run_toml(run_file(tiny_llama, data_dir, task="text-classification",
                               passes='[[passes]]\ntype = "LoRA"\ntrain_data_config = "train"'), command="validate")
    assert result.exit_code == 2
    assert "passes[0] (LoRA).train_data_config: data.train needs label_field for a text-classification model" in result.output


class TestLoRAConformance(PassConformance):
    plugin_name = "lora"
    pass_type = "LoRA"
    valid_options = {"train_data_config": "train", "r": 8, "target_modules": ["q_proj"],
                     "training_args": {"max_steps": 2}}
    invalid_options = [({"r": 0}, "r"), ({"lora_dropout": 2.0}, "lora_dropout"),
                       ({"target_modules": "everything"}, "target_modules"), ({"alpha": "high"}, "alpha"),
                       ({"torch_dtype": "float8"}, "torch_dtype")]
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
    type = "LoRA"
    r = 2
    train_data_config = "train"
    [passes.training_args]
    max_steps = 2
    [output]
    dir = "out"
    '''
