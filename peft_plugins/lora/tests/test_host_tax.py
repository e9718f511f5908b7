"""What a LoRA pass costs besides training: one evaluation per eval step, a cheap loss plot, no slow exit."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from pathlib import Path

from hostkit_lora.testing import run_file

PASS = '''
[[passes]]
type = "LoRA"
r = 4
train_data_config = "train"
{eval}
[passes.training_args]
max_steps = 4
per_device_train_batch_size = 8
learning_rate = 0.01
logging_steps = 1
{extra}
'''


def _tables(data_dir: Path) -> str:
    return f'''
[data.train]
type = "jsonl"
path = "{data_dir / 'qa.jsonl'}"
text_template = "### Q: {{question}}\\n### A: {{answer}}"
max_seq_len = 32
[data.eval]
type = "jsonl"
path = "{data_dir / 'qa.jsonl'}"
text_template = "### Q: {{question}}\\n### A: {{answer}}"
max_seq_len = 32
max_samples = 8
'''


def test_the_eval_at_the_last_step_is_not_run_twice(tiny_llama, data_dir, run_toml, monkeypatch):
    import transformers

    calls = []
    evaluate = transformers.Trainer.evaluate

    def counted(self, *args, **kwargs):
        calls.append(self.state.global_step)
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "evaluate", counted)
    for eval_steps, expected in ((2, [2, 4]), (3, [3, 4])):
        calls.clear()
        result = run_toml(run_file(tiny_llama, data_dir, data_tables=_tables(data_dir), passes=PASS.format(
            eval='eval_data_config = "eval"', extra=f"eval_steps = {eval_steps}")))
        assert result.exit_code == 0, result.output
        metrics = result.step(0)["metrics"]
        assert [s for s, _ in metrics["eval_loss"]] == expected  # each step once
        assert calls == expected  # 4 % 3 != 0: one evaluation after training, for step 4
        assert metrics["final_eval_loss"] == metrics["eval_loss"][-1][1]


def test_train_tokens_count_the_real_tokens(tiny_llama, data_dir, run_toml):
    import json

    from transformers import AutoTokenizer

    # 4 steps x 8 = the 32 rows once: every example's tokens, no padding
    result = run_toml(run_file(tiny_llama, data_dir, data_tables=_tables(data_dir), passes=PASS.format(eval="", extra="")))
    assert result.exit_code == 0, result.output
    metrics = result.step(0)["metrics"]
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    rows = [json.loads(line) for line in (data_dir / "qa.jsonl").read_text().splitlines()]
    texts = [f"### Q: {r['question']}\n### A: {r['answer']}" for r in rows]
    expected = sum(len(ids) for ids in tok(texts, truncation=True, max_length=32)["input_ids"])
    assert metrics["train_tokens"] == expected
    assert abs(metrics["train_tokens_per_s"] - expected / metrics["train_runtime_s"]) <= 0.01 * metrics["train_tokens_per_s"]


def test_the_pass_freezes_the_long_lived_objects_and_frees_its_model(tiny_llama, data_dir, run_toml, monkeypatch):
    from hostkit_lora.training import LoraTraining

    models = []
    load_base = LoraTraining.load_base

    def recorded(self):
        model = load_base(self)
        models.append(weakref.ref(model))
        return model

    monkeypatch.setattr(LoraTraining, "load_base", recorded)
    result = run_toml(run_file(tiny_llama, data_dir, passes=PASS.format(eval="", extra="")))
    assert result.exit_code == 0, result.output
    # frozen: the interpreter's teardown and later full collections skip torch's/transformers' objects
    assert gc.get_freeze_count() > 10_000
    assert len(models) == 1 and models[0]() is None  # the model itself was collected before freezing


def test_the_loss_plot_needs_no_matplotlib(tmp_path):
    code = f'''
import sys
from pathlib import Path
from hostkit_lora.plot import plot_loss
plot_loss(Path({str(tmp_path / "loss.png")!r}), [(s, 6.0 - 0.1 * s) for s in range(1, 41)], [(20, 4.5), (40, 2.5)],
          title="LoRA loss")
assert not any(m.startswith("matplotlib") for m in sys.modules), "matplotlib imported"
'''
    subprocess.run([sys.executable, "-c", code], check=True)
    from PIL import Image

    from hostkit_lora.plot import EVAL_COLOUR, TRAIN_COLOUR

    image = Image.open(tmp_path / "loss.png").convert("RGB")
    assert image.size == (600, 350)
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 16)}
    assert TRAIN_COLOUR in colours and EVAL_COLOUR in colours
    # the train line falls from the upper left to the lower right
    pixels = image.load()
    train_ys = {x: [y for y in range(350) if pixels[x, y] == TRAIN_COLOUR] for x in (80, 560)}
    assert train_ys[80] and train_ys[560] and min(train_ys[80]) < min(train_ys[560])


def test_nice_ticks_cover_the_range_with_round_steps():
    from hostkit_lora.plot import nice_ticks

    assert nice_ticks(5, 40) == [0, 10, 20, 30, 40]
    ticks = nice_ticks(5.97, 6.21)
    assert ticks[0] <= 5.97 and ticks[-1] >= 6.21 and abs((ticks[1] - ticks[0]) - 0.05) < 1e-9
    assert nice_ticks(3.0, 3.0)[0] <= 3.0 <= nice_ticks(3.0, 3.0)[-1]
