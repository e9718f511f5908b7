"""Issue 12.2 (NaN loss), 12.5 (half-written checkpoint) and 12.10 (loss curve after a resume): LoRA on the tiny Llama.

A training run is hours of someone's compute: never lose it, never pretend. These are the cases
where the defect is in training itself, so they train (a few dozen steps of the 2-layer Llama).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from reliability.support import BUG, TRACEBACK, kill_group, lora_run, start_hostkit, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _complete_checkpoints(out: Path) -> list[Path]:
    folder = out / ".01-lora.partial" / "checkpoints"
    found = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()
             and p.name.rsplit("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def _killed_after(workdir: Path, text: str, checkpoints: int) -> list[Path]:
    """Start ``text`` in a subprocess, kill -9 it once ``checkpoints`` complete checkpoints exist."""
    (workdir / "run.toml").write_text(text)
    out = workdir / "out"
    proc = start_hostkit(["run", "run.toml"], workdir)
    try:
        wait_for(lambda: len(_complete_checkpoints(out)) >= checkpoints, proc, timeout=240,
                 what=f"{checkpoints} checkpoints")
    finally:
        kill_group(proc)
    assert not (out / "01-lora").exists()
    return _complete_checkpoints(out)


def test_a_half_written_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_llama, count_data, run_toml):
    text = lora_run(tiny_llama, count_data, max_steps=10, save_steps=2)
    found = _killed_after(tmp_path, text, checkpoints=2)
    newest, previous = found[-1], found[-2]
    state = newest / "trainer_state.json"
    state.write_text(state.read_text()[: len(state.read_text()) // 2])  # what a kill during a save leaves
    result = run_toml(text)  # the same file in the same folder, in-process
    code, output = result.exit_code, result.output
    assert code == 0, output
    assert TRACEBACK not in output and BUG not in output, output
    said = [line for line in output.splitlines() if newest.name in line]
    assert said and previous.name in said[0], output  # names the broken one and the one it falls back to
    step = json.loads((tmp_path / "out" / "manifest.json").read_text())["steps"][0]
    assert step["status"] == "ok" and step["resumed"] is True
    assert step["notes"]["resumed_from"] == f"checkpoints/{previous.name}"
    assert step["metrics"]["train_steps"] == 10
    assert (tmp_path / "out" / "01-lora" / "adapter" / "adapter_model.safetensors").is_file()


def test_the_loss_curve_after_a_resume_covers_the_whole_training(tmp_path, tiny_llama, count_data, run_toml):
    text = lora_run(tiny_llama, count_data, max_steps=8, save_steps=2)
    _killed_after(tmp_path, text, checkpoints=1)
    result = run_toml(text)
    assert result.exit_code == 0, result.output
    step = json.loads((tmp_path / "out" / "manifest.json").read_text())["steps"][0]
    assert step["resumed"] is True
    resumed_at = int(step["notes"]["resumed_from"].rsplit("-", 1)[1])
    curve = step["metrics"]["train_loss"]
    assert [point[0] for point in curve] == list(range(1, 9)), curve  # logging_steps = 1, each step once
    assert resumed_at >= 2 and all(point[1] > 0 for point in curve)
    assert (tmp_path / "out" / "01-lora" / "loss.png").is_file()


def test_a_loss_that_becomes_nan_stops_the_step_naming_the_training_step(tmp_path, tiny_llama, count_data, run_toml):
    # a finite config that diverges: Adam's first update is ~lr, so every adapted linear layer (lm_head too)
    # jumps to ~1e30 and the activations overflow; the Trainer then logs the NaN loss as 0.0 (its nan filter)
    text = lora_run(tiny_llama, count_data, max_steps=8, extra_args="learning_rate = 1e30",
                    options='target_modules = "all-linear"')
    result = run_toml(text)
    code, output = result.exit_code, result.output
    assert code == 1, output
    assert TRACEBACK not in output and BUG not in output, output
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "passes[0] (LoRA)" in errors[0], output
    assert re.search(r"(nan|inf)", errors[0], re.IGNORECASE) and re.search(r"step \d+", errors[0]), output
    assert not list((tmp_path / "out").rglob("adapter_model.safetensors")), "an adapter was written"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "failed"
