"""Helpers of the reliability suite (issue 12): run files, subprocess runs, a toy ONNX model.

Every test here drives hostkit from the outside (the CLI, run files, files on disk), the way a
careless or hostile user would, and checks what the user sees: the exit code, one clear line
naming the file / TOML path / step, no traceback for a user's error, and outputs on disk that
agree with the manifest.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

#: what a traceback looks like in output (the host prints one only for a bug in a plugin)
TRACEBACK = "Traceback (most recent call last)"
BUG = "bug in the plugin"


def echo_run(*, passes: str = '[[passes]]\ntype = "Echo"\n', output: str = "out", model: str = "m",
             extra: str = "") -> str:
    """A run file over the fake model folder ``m`` with the given ``[[passes]]`` tables."""
    return f'[model]\ntype = "HfModel"\npath = "{model}"\n{extra}\n{passes}\n[output]\ndir = "{output}"\n'


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("ERROR")]


def hostkit_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HOSTKIT_LOAD_PLUGINS", "HOSTKIT_DISABLE_PLUGINS")}
    env.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra})
    return env


def start_hostkit(args: list[str], cwd: Path, **popen: object) -> subprocess.Popen:
    """``python -m hostkit ARGS`` in the background, in its own process group, output captured."""
    return subprocess.Popen([sys.executable, "-m", "hostkit", *args], cwd=cwd, env=hostkit_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen | None = None, timeout: float = 120,
             what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.05)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def file_size_limit(nbytes: int) -> Callable[[], None]:
    """A ``preexec_fn`` that caps the size of any file the child writes (a disk that fills up).

    With SIGXFSZ ignored, a write past the limit fails with ``OSError(EFBIG, "File too large")``,
    the same path through the program as ``ENOSPC`` on a full disk.
    """

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return apply


def run_limited(args: list[str], cwd: Path, nbytes: int, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hostkit", *args], cwd=cwd, env=hostkit_env(),
                          capture_output=True, text=True, timeout=timeout, preexec_fn=file_size_limit(nbytes))








# -- LoRA on the tiny Llama ---------------------------------------------------------------------

WORDS = "one two three four five six seven eight nine ten".split()





def lora_run(model: Path, data: Path, *, max_steps: int, save_steps: int = 500, extra_args: str = "",
             options: str = "") -> str:
    from hostkit_lora.testing import lora_run as run

    return run(model, data, max_steps=max_steps, save_steps=save_steps, options=options,
               training_args="logging_steps = 1\n" + extra_args)


# -- a toy ONNX model extracted by ExtractAdapters (for convert-adapters and infer) --------------

HIDDEN = 8
MODULE = "model.layers.0.self_attn.q_proj"
TOY_BASE = "toy@sha256:0123456789abcdef"


def toy_adapter(seed: int = 1, r: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"{MODULE}.lora_A.weight": (rng.standard_normal((HIDDEN, r)) / 4).astype(np.float32),
            f"{MODULE}.lora_B.weight": (rng.standard_normal((r, HIDDEN)) / 4).astype(np.float32)}


def build_toy_graph(path: Path, adapter: dict[str, np.ndarray]) -> Path:
    """``y = x W + (x A) B`` for one contract-named module, with the base identity in its metadata."""
    import onnx
    from onnx import helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((HIDDEN, HIDDEN)).astype(np.float32) / 4
    a_name, b_name = f"{MODULE}.lora_A.weight", f"{MODULE}.lora_B.weight"
    inits = [numpy_helper.from_array(w, f"{MODULE}.weight"), numpy_helper.from_array(adapter[a_name], a_name),
             numpy_helper.from_array(adapter[b_name], b_name)]
    nodes = [helper.make_node("MatMul", ["x", f"{MODULE}.weight"], ["base"]),
             helper.make_node("MatMul", ["x", a_name], ["xa"]),
             helper.make_node("MatMul", ["xa", b_name], ["xab"]),
             helper.make_node("Add", ["base", "xab"], ["y"])]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", HIDDEN])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", HIDDEN])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    entry = model.metadata_props.add()
    entry.key, entry.value = "hostkit.base_model", TOY_BASE
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path





def write_peft_folder(path: Path, config: object, *, r: int = 2) -> Path:
    """A PEFT adapter folder for the toy module with ``adapter_config.json`` = ``config`` (any JSON)."""
    from safetensors.numpy import save_file

    weights = toy_adapter(r=r)
    path.mkdir(parents=True, exist_ok=True)
    save_file({f"base_model.model.{MODULE}.lora_A.weight": np.ascontiguousarray(weights[f"{MODULE}.lora_A.weight"].T),
               f"base_model.model.{MODULE}.lora_B.weight": np.ascontiguousarray(weights[f"{MODULE}.lora_B.weight"].T)},
              str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return path


def peft_config(**overrides: object) -> dict[str, object]:
    return {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "bias": "none",
            "use_dora": False, "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {},
            "base_model_name_or_path": "toy-base", **overrides}


def cli(args: list[str], cwd: Path, *, env: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, str]:
    """``hostkit ARGS`` in a subprocess (``tests/host_helpers.run_hostkit``): exit code and all output."""
    from host_helpers import run_hostkit

    done = run_hostkit(args, cwd=cwd, env={"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})},
                       timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def assert_user_error(code: int, output: str, expected_code: int, *needles: str) -> None:
    """One clear error: the exit code, no traceback, no "bug in the plugin", and every needle in an ERROR block."""
    assert code == expected_code, f"exit {code}, expected {expected_code}:\n{output}"
    assert TRACEBACK not in output, output
    assert BUG not in output, output
    for needle in needles:
        assert needle in output, f"{needle!r} not in:\n{output}"
