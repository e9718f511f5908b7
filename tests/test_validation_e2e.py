"""A run file with many mistakes across host tables and a real plugin's options: all reported at once."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BAD = f"""
[model]
type = "HfModel"
path = "{ROOT / 'examples' / 'models' / 'tiny-llama'}"
taks = "text-generation"

[data.train]
type = "jsonl"
path = "missing.jsonl"
max_seq_len = "512"

[[passes]]
type = "LoRA"
alhpa = 16
r = 8.5
train_data_config = "trian"
[passes.training_args]
learnin_rate = 2e-4

[[passes]]
type = "MergeAdapterWeight"

[output]
dir = "out"
"""


def test_every_mistake_is_reported_with_its_path_and_nothing_is_written(run_toml, tmp_path):
    result = run_toml(BAD, command="run")
    assert result.exit_code == 2
    for expected in (
        "model.taks: unknown key (did you mean 'task'?)",
        "data.train.max_seq_len: expected an integer, got string '512'",
        f"data.train.path: {tmp_path / 'missing.jsonl'} does not exist",
        "passes[0] (LoRA).alhpa: unknown key (did you mean 'alpha'?)",
        "passes[0] (LoRA).r: expected an integer, got float 8.5",
        "passes[0] (LoRA).train_data_config: no [data.trian] table (defined: train) (did you mean 'train'?)",
        "passes[0] (LoRA).training_args.learnin_rate: unknown key (did you mean 'learning_rate'?)",
        "passes[1].type: unknown pass type 'MergeAdapterWeight' (did you mean 'MergeAdapterWeights'?)",
    ):
        assert expected in result.output, result.output
    assert "8 problems" in result.output
    assert not (tmp_path / "out").exists()
