"""Benchmark of hostkit-lora / hostkit-qlora (not part of the test suite).

    .venv/bin/python bench/bench_lora.py [RESULTS.md] [--repeats 3] [--threads 1] [--steps 40] [--skip-memory]

1. Overhead: the LoRA pass run from a TOML file (``python -m hostkit run``)
   against a hand-written peft + Trainer script doing the same training (same
   model, data, LoRA config, TrainingArguments, steps and seed). Each is a
   fresh process, alternated ``--repeats`` times; medians are reported for the
   whole process (wall) and for ``trainer.train`` alone (training).
2. Memory: QLoRA (nf4) against LoRA (fp32) on a ~100M-parameter Llama-shaped
   model (``hostkit.testing.tiny.build_llama_100m``, random weights): resident
   memory above the post-import baseline once the model is loaded, and the
   peak during a few batch-1 training steps, each in its own process, through
   the plugins' own loading code. A "plain 4-bit load" row shows QLoRA without
   releasing the memory-mapped checkpoint (what transformers does by itself).

Markdown goes to stdout, and to the file given as the first argument.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable

RAW_SCRIPT = r'''
"""The same LoRA training, written by hand with peft + transformers (no hostkit)."""
import json, sys, time
import torch, transformers, peft, datasets
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

model_dir, data_file, out_dir, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(model_dir)
tok.pad_token = tok.eos_token
rows = datasets.load_dataset("json", data_files={"train": [data_file]}, split="train")
ids = tok(list(rows["text"]), truncation=True, max_length=128)["input_ids"]
train = [{"input_ids": x, "attention_mask": [1] * len(x)} for x in ids]
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
model.enable_input_require_grads()
transformers.set_seed(42)  # the LoRA A init draws from the global RNG
model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=16, lora_dropout=0.05, bias="none",
                                                   target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
args = TrainingArguments(output_dir=out_dir, max_steps=steps, per_device_train_batch_size=4, learning_rate=2e-4,
                         lr_scheduler_type="constant", warmup_steps=0.03, activation_checkpointing=True,
                         activation_checkpointing_kwargs={"use_reentrant": False}, report_to="none",
                         disable_tqdm=True, logging_steps=1, save_strategy="no", use_cpu=True,
                         dataloader_pin_memory=False, seed=42)
trainer = Trainer(model=model, args=args, train_dataset=train,
                  data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
result = trainer.train()
train_s = result.metrics["train_runtime"]  # the same clock the pass reports
model.save_pretrained(out_dir + "/adapter")
print(json.dumps({"train_s": train_s, "loss": result.training_loss}))
'''

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


def bench_overhead(work: Path, repeats: int, threads: int, steps: int) -> str:
    from hostkit.testing.tiny import build_tiny_llama

    model = build_tiny_llama(work / "small-llama", hidden_size=256, layers=4, heads=8, kv_heads=4,
                             intermediate_size=688)
    data = _write_data(work / "train.jsonl")
    (work / "raw.py").write_text(RAW_SCRIPT)
    (work / "run.toml").write_text(textwrap.dedent(f'''
        [model]
        type = "HfModel"
        path = "{model}"
        [data.train]
        type = "jsonl"
        path = "{data}"
        text_field = "text"
        max_seq_len = 128
        [[passes]]
        type = "LoRA"
        r = 16
        alpha = 16
        target_modules = ["q_proj", "v_proj"]
        train_data_config = "train"
        [passes.training_args]
        max_steps = {steps}
        per_device_train_batch_size = 4
        logging_steps = 1
        save_strategy = "no"
        seed = 42
        [output]
        dir = "out"
        cache = false
        '''))
    env = _env(threads)
    rows = {"hostkit": {"wall": [], "train": [], "loss": []}, "raw": {"wall": [], "train": [], "loss": []}}
    for i in range(repeats):
        for which in ("raw", "hostkit") if i % 2 else ("hostkit", "raw"):
            if which == "hostkit":
                wall, _ = _timed([PY, "-m", "hostkit", "run", "run.toml"], work, env)
                step = json.loads((work / "out" / "manifest.json").read_text())["steps"][0]
                train = step["metrics"]["train_runtime_s"]
                loss = statistics.fmean(v for _, v in step["metrics"]["train_loss"])
            else:
                wall, out = _timed([PY, "raw.py", str(model), str(data), str(work / "raw-out"), str(steps)], work, env)
                result = json.loads(out.strip().splitlines()[-1])
                train, loss = result["train_s"], result["loss"]
            rows[which]["wall"].append(wall)
            rows[which]["train"].append(train)
            rows[which]["loss"].append(loss)
    med = {w: {k: statistics.median(v) for k, v in r.items()} for w, r in rows.items()}
    lines = [
        f"### LoRA pass from TOML vs hand-written peft + Trainer ({steps} steps, batch 4 x 128 tokens, "
        f"4-layer Llama h=256, {threads} thread(s), median of {repeats})",
        "",
        "| | wall (process) s | training s | mean train loss |",
        "|---|---|---|---|",
        f"| `hostkit run` (LoRA pass) | {med['hostkit']['wall']:.2f} | {med['hostkit']['train']:.2f} | {med['hostkit']['loss']:.4f} |",
        f"| hand-written script | {med['raw']['wall']:.2f} | {med['raw']['train']:.2f} | {med['raw']['loss']:.4f} |",
        f"| **ratio hostkit/raw** | **{med['hostkit']['wall'] / med['raw']['wall']:.3f}** | "
        f"**{med['hostkit']['train'] / med['raw']['train']:.3f}** | |",
        "",
        "All runs (s): " + "; ".join(f"{w} wall {', '.join(f'{x:.2f}' for x in r['wall'])} / train "
                                      f"{', '.join(f'{x:.2f}' for x in r['train'])}" for w, r in rows.items()),
        "",
    ]
    return "\n".join(lines)


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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for every measured process")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args(argv)
    args.output = args.output or args.output_file
    parts = ["## hostkit-lora / hostkit-qlora", "",
             f"`{' '.join(['bench/bench_lora.py'] + (argv if argv is not None else sys.argv[1:]))}` on "
             f"{os.cpu_count()} CPU(s), {time.strftime('%Y-%m-%d')}", ""]
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        work = Path(tmp)
        if not args.skip_overhead:
            parts.append(bench_overhead(work, args.repeats, args.threads, args.steps))
        if not args.skip_memory:
            parts.append(bench_memory(work, args.threads))
    text = "\n".join(parts)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
