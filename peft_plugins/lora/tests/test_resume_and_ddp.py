"""A killed training step resumes from its checkpoint; torchrun trains with DDP on CPU (gloo)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostkit_lora.testing import lora_run


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint(tiny_llama, data_dir, tmp_path, run_toml):
    data = data_dir / "count.jsonl"
    text = lora_run(tiny_llama, data, max_steps=150, save_steps=5)
    (tmp_path / "run.toml").write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "hostkit", "run", "run.toml"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = tmp_path / "out" / ".01-lora.partial" / "checkpoints"
    try:
        deadline = time.time() + 240
        while not list(checkpoints.glob("checkpoint-*/trainer_state.json")):
            assert proc.poll() is None, "the run ended before writing a checkpoint"
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "out" / "01-lora").exists()

    result = run_toml(text)  # same file, same folder: the step's key matches the partial folder
    assert result.exit_code == 0, result.output
    step = result.step(0)
    assert step["resumed"] is True
    resumed_from = step["notes"]["resumed_from"]
    assert resumed_from.startswith("checkpoints/checkpoint-")
    first = int(resumed_from.rsplit("-", 1)[1])
    # the loss curve covers the whole training: the checkpoint's history, then the resumed steps,
    # each logged step once (no step before the checkpoint was trained again)
    steps = [s for s, _ in step["metrics"]["train_loss"]]
    assert steps == sorted(set(steps)), steps
    assert steps[0] <= first < steps[-1], (steps, first)
    assert step["metrics"]["train_steps"] == 150
    assert (result.output_dir / "01-lora" / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tiny_llama, data_dir, tmp_path):
    data = data_dir / "count.jsonl"
    (tmp_path / "run.toml").write_text(lora_run(tiny_llama, data, max_steps=6, save_steps=100))
    with socket.socket() as sock:  # torchrun hangs with --master_port 0
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "hostkit", "run", "run.toml"]
    done = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    step = manifest["steps"][0]
    assert manifest["status"] == "ok" and step["notes"]["world_size"] == 2
    assert step["metrics"]["train_steps"] == 6
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["01-lora", "manifest.json"]
    assert sorted(p.name for p in (out / "01-lora" / "adapter").glob("adapter_*")) == [
        "adapter_config.json", "adapter_model.safetensors"]
    # the progress header is printed once (rank 0 only)
    assert (done.stdout + done.stderr).count("[1/1] LoRA ... done") == 1
