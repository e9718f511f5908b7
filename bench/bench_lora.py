"""Memory benchmark of hostkit-qlora against hostkit-lora (not part of the test suite).

    .venv/bin/python bench/bench_lora.py [RESULTS.md] [--threads 1]

QLoRA (nf4) against LoRA (fp32) on a ~100M-parameter Llama-shaped model
(``hostkit.testing.tiny.build_llama_100m``, random weights): resident memory
above the post-import baseline once the model is loaded, and the peak during a
few batch-1 training steps, each in its own process, through the plugins' own
loading code. A "plain 4-bit load" row shows QLoRA without releasing the
memory-mapped checkpoint (what transformers does by itself).

The LoRA pass against a hand-written peft + Trainer script (speed, whole
process, the same training) is ``bench/bench_train.py`` with ``bench/raw_lora.py``.

Markdown goes to stdout, and to the file given as the first argument.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable

MEMORY_SCRIPT = r'''
"""One memory measurement: load the base the way the pass does, then a few batch-1 training steps."""
import ctypes, gc, json, sys, types
from pathlib import Path

mode, model_dir, data_file, out_dir, steps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
import torch, transformers, peft, bitsandbytes, datasets, accelerate  # everything either pass imports
import hostkit_lora.training as training
from hostkit_lora.data import TextData as DataConfig
from hostkit.fsutil import reset_peak_rss
from hostkit import HfModel
from hostkit_lora.config import LoRAConfig
from hostkit_qlora.config import QLoRAConfig
from hostkit_qlora.quantized import QLoraTraining

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

gc.collect(); ctypes.CDLL("libc.so.6").malloc_trim(0)
baseline = rss_mb()
reset_peak_rss()
found = {}

class Context:
    output_dir = Path(out_dir); resuming = False; is_main_process = True
    run = types.SimpleNamespace(barrier=lambda: None, world_size=1)
    def data_config(self, name): return DataConfig(type="jsonl", path=data_file, max_seq_len=128)
    def report_metric(self, name, value, step=None):
        if name == "train_runtime_s": found["train_s"] = value
    def progress(self, *a, **k): pass
    def note(self, **facts): found.update(facts)

common = dict(train_data_config="train", r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
              training_args={"max_steps": steps, "per_device_train_batch_size": 1, "save_strategy": "no", "logging_steps": 1})
if mode == "lora":
    cls, config = training.LoraTraining, LoRAConfig(**common)
else:
    cls, config = QLoraTraining, QLoRAConfig(quant_type="nf4", **common)
    if mode == "qlora-plain":  # what transformers + bitsandbytes do without hostkit's two fixes
        training.release_checkpoint_file = lambda model: None
        training.fixed_mmap_threshold = lambda: False
    if mode == "qlora-fast":  # cpu_low_memory = false
        config = QLoRAConfig(quant_type="nf4", cpu_low_memory=False, **common)

class Measured(cls):
    def load_base(self):
        model = super().load_base()
        gc.collect()
        found["lazy_mb"] = rss_mb() - baseline
        with torch.no_grad():  # read every weight once: mmapped pages become resident, as in training
            for p in model.parameters():
                p.data.float().sum() if p.dtype != torch.uint8 else p.data.sum()
        gc.collect()
        found["loaded_mb"] = rss_mb() - baseline
        found["load_peak_mb"] = hwm_mb() - baseline
        found["param_mb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        reset_peak_rss()
        return model

Measured(config, HfModel(path=model_dir), Context()).run()
found["train_peak_mb"] = hwm_mb() - baseline
found["baseline_mb"] = baseline
print("RESULT " + json.dumps(found, default=str))
'''


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
            "PYTHONWARNINGS": "ignore"}


def _write_data(path: Path, n: int = 256) -> Path:
    words = "one two three four five six seven eight nine ten".split()
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"text": " ".join(words[(i + k) % 10] for k in range(60))}) + "\n")
    return path


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return wall, done.stdout


def bench_memory(work: Path, threads: int, steps: int = 5) -> str:
    from hostkit.testing.tiny import build_llama_100m

    model = build_llama_100m(work / "llama-100m")
    data = _write_data(work / "mem.jsonl", n=16)
    (work / "mem.py").write_text(MEMORY_SCRIPT)
    env = _env(threads)
    results = {}
    for mode in ("lora", "qlora", "qlora-fast", "qlora-plain"):
        _, out = _timed([PY, "mem.py", mode, str(model), str(data), str(work / f"mem-{mode}"), str(steps)], work, env)
        results[mode] = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    lora = results["lora"]
    lines = [
        f"### QLoRA (nf4) vs LoRA (fp32) memory, ~100M-parameter Llama shape (h=768, 12 layers), "
        f"batch 1 x 128 tokens, {steps} steps, r=16 on all 7 projections",
        "",
        "RSS above the post-import baseline (MiB), each mode in its own process, through the plugins' loading "
        "code. *weights*: bytes of the parameters; *lazy*: right after `load_base()` (mmapped pages not yet "
        "read); *loaded*: after reading every weight once (what the model occupies); *load peak*: VmHWM while "
        "loading; *train peak*: VmHWM during the training steps (counter reset after loading).",
        "",
        "| | weights | lazy | loaded | load peak | train peak | loaded / LoRA | train peak / LoRA | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"lora": "LoRA fp32", "qlora": "QLoRA nf4 (hostkit)", "qlora-fast": "QLoRA nf4, `cpu_low_memory = false`",
             "qlora-plain": "QLoRA nf4, plain 4-bit load (no hostkit fixes)"}
    for mode, r in results.items():
        lines.append(f"| {names[mode]} | {r['param_mb']:.0f} | {r['lazy_mb']:.0f} | {r['loaded_mb']:.0f} | "
                     f"{r['load_peak_mb']:.0f} | {r['train_peak_mb']:.0f} | {r['loaded_mb'] / lora['loaded_mb']:.2f} | "
                     f"{r['train_peak_mb'] / lora['train_peak_mb']:.2f} | {r['train_s']:.1f} |")
    lines += [
        "",
        f"Post-import baseline: {lora['baseline_mb']:.0f} MiB (torch, transformers, peft, bitsandbytes, datasets).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", type=Path, help="also write the Markdown here")
    parser.add_argument("--output", dest="output_file", type=Path, help="the same, as an option (make bench)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for every measured process")
    args = parser.parse_args(argv)
    args.output = args.output or args.output_file
    parts = ["## hostkit-lora / hostkit-qlora", "",
             f"`{' '.join(['bench/bench_lora.py'] + (argv if argv is not None else sys.argv[1:]))}` on "
             f"{os.cpu_count()} CPU(s), {time.strftime('%Y-%m-%d')}", ""]
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        work = Path(tmp)
        parts.append(bench_memory(work, args.threads))
    text = "\n".join(parts)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
