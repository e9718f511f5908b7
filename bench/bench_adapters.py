"""Multi-adapter serving: a new onnxruntime session per adapter vs switching adapters in one session.

On a ~100M-parameter Llama-shaped model (random weights, built locally by
``hostkit.testing.tiny.build_llama_100m``) with two LoRA adapters on
q/k/v/o_proj, exported to ONNX and run through ExtractAdapters:

* **new session per adapter**: what serving a different adapter costs when the
  adapter is baked into the session (``make_inputs = false``: external
  initializers given at session creation, as Olive's consumers do): session
  creation + first run;
* **switching in one session** (``make_inputs = true``): the per-call overhead
  of alternating adapters A/B/A/B vs always the same adapter, for an
  ``.onnx_adapter`` activated through ``RunOptions.add_active_adapter`` and
  for weights fed as inputs (``.npz``);
* **latency with vs without adapter** in the same session, and the base graph
  exported without LoRA.

Everything is measured side by side in one run (median of ``-n`` calls).
Usage: ``python bench/bench_adapters.py [--output PART.md] [-n 15] [--seq 8,128] [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def timed(fn, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def export_base(base_dir: Path, out: Path) -> Path:
    """The base model in ONNX, no LoRA nodes (for the 'no adapter at all' row)."""
    from transformers import AutoModelForCausalLM

    from hostkit_extract_adapters.testing import export_logits_graph

    model = AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager").eval()
    return export_logits_graph(model, out, constant_folding=True)


def session_options():
    """Default threads, no spin-waiting: the CPUs of a shared machine are not ours to spin on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, help="write the Markdown here (default: stdout)")
    parser.add_argument("-n", type=int, default=20, help="rounds per per-call measurement (median)")
    parser.add_argument("--sessions", type=int, default=3, help="new sessions per measurement (median)")
    parser.add_argument("--seq", default="8,128", help="tokens per call, comma-separated")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--workdir", type=Path, help="keep the models here (default: a temporary folder)")
    args = parser.parse_args()

    import onnxruntime as ort

    from hostkit.testing.tiny import build_llama_100m
    from hostkit_extract_adapters.convert import convert_peft_adapter
    from hostkit_extract_adapters.extract import extract_adapters
    from hostkit_extract_adapters.infer import AdapterSession
    from hostkit_extract_adapters.testing import export_peft_llama, make_peft_adapter
    from hostkit_extract_adapters.weights import save_weights

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name)
    else:
        root = args.workdir
        root.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    setup = time.perf_counter()
    base_dir = root / "llama-100m"
    if not (base_dir / "config.json").exists():
        log("building the ~100M Llama ...")
        build_llama_100m(base_dir)
    import json

    cfg = json.loads((base_dir / "config.json").read_text())
    params = sum(np.prod(shape) for shape in _shapes(base_dir))
    adapters = {}
    for name, seed, rank in (("a", 1, args.rank), ("b", 2, args.rank // 2)):
        path = root / f"adapter-{name}"
        if not (path / "adapter_config.json").exists():
            make_peft_adapter(base_dir, path, seed=seed, r=rank, lora_alpha=2 * rank, target_modules=TARGETS)
        adapters[name] = path
    onnx_lora = root / "export" / "model.onnx"
    if not onnx_lora.exists():
        log("exporting with LoRA ...")
        export_peft_llama(base_dir, adapters["a"], onnx_lora)
    onnx_base = root / "export-base" / "model.onnx"
    if not onnx_base.exists():
        log("exporting the base ...")
        export_base(base_dir, onnx_base)
    log("extracting ...")
    inputs_dir, external_dir = root / "extracted-inputs", root / "extracted-external"
    inputs_model = extract_adapters(onnx_lora, inputs_dir, save_format="onnx_adapter")
    external_model = extract_adapters(onnx_lora, external_dir, make_inputs=False, save_format="numpy")
    converted = convert_peft_adapter(adapters["b"])
    b_adapter = save_weights(converted.weights, root / "b.onnx_adapter", "onnx_adapter", converted.metadata)
    b_npz = save_weights(converted.weights, root / "b.npz", "numpy", converted.metadata)
    a_npz = save_weights(inputs_model.signature.fit(_load(inputs_model.weights_path)), root / "a.npz", "numpy", {})
    setup = time.perf_counter() - setup

    n = args.n
    seqs = [int(v) for v in args.seq.split(",")]
    rng = np.random.default_rng(0)
    feeds = {}
    for seq in seqs:
        ids = rng.integers(3, cfg["vocab_size"], size=(1, seq)).astype(np.int64)
        feeds[seq] = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    log("measuring ...")

    session = AdapterSession(inputs_model.model_path, session_options=session_options)  # .onnx_adapter files: RunOptions.add_active_adapter
    session.load_adapter("a", inputs_model.weights_path)
    session.load_adapter("b", b_adapter)
    fed = AdapterSession(inputs_model.model_path, session_options=session_options)  # .npz files: weights fed as OrtValue inputs
    fed.load_adapter("a", a_npz)
    fed.load_adapter("b", b_npz)
    assert session.adapters["a"].run_options is not None and fed.adapters["a"].feed
    base_session = ort.InferenceSession(str(onnx_base), session_options(), providers=["CPUExecutionProvider"])
    external = AdapterSession(external_model.model_path, session_options=session_options)
    external.load_adapter("a", a_npz)

    def pair(s, first, second, feed):
        def call():
            s.run(feed, adapter=first)
            s.run(feed, adapter=second)
        return call

    per_call: dict[int, dict[str, float]] = {}
    for seq, feed in feeds.items():
        cases = {
            "same a, a (RunOptions)": pair(session, "a", "a", feed),
            "same b, b (RunOptions)": pair(session, "b", "b", feed),
            "switch a, b (RunOptions)": pair(session, "a", "b", feed),
            "same a, a (fed)": pair(fed, "a", "a", feed),
            "same b, b (fed)": pair(fed, "b", "b", feed),
            "switch a, b (fed)": pair(fed, "a", "b", feed),
            "no adapter": pair(session, None, None, feed),
            "base graph": lambda feed=feed: (base_session.run(None, feed), base_session.run(None, feed)),
            "external, a": pair(external, "a", "a", feed),
        }
        for call in cases.values():
            call()  # warm up
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(n):  # round robin, so that every case sees the same machine load
            for name, call in cases.items():
                start = time.perf_counter()
                call()
                samples[name].append((time.perf_counter() - start) / 2)
        per_call[seq] = {name: statistics.median(values) for name, values in samples.items()}
        for key in ("RunOptions", "fed"):  # per round: a switching pair minus the mean of the two steady pairs
            diffs = [sw - (aa + bb) / 2 for sw, aa, bb in zip(samples[f"switch a, b ({key})"],
                                                              samples[f"same a, a ({key})"], samples[f"same b, b ({key})"])]
            per_call[seq][f"switch cost ({key})"] = statistics.median(diffs)
        log(f"seq {seq}: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in per_call[seq].items()))
    del session, fed, base_session, external
    gc.collect()

    # a new session per adapter (external initializers): creation + first call
    feed = feeds[seqs[-1]]

    def new_session_call(adapter: str) -> None:
        s = AdapterSession(external_model.model_path, session_options=session_options)
        s.load_adapter(adapter, a_npz if adapter == "a" else b_npz)
        s.run(feed, adapter=adapter)
        del s
        gc.collect()

    new_session_call("b")  # warm the file cache
    toggle = iter(range(10**9))
    new_session = timed(lambda: new_session_call("ab"[next(toggle) % 2]), args.sessions)

    ms = lambda t: f"{t * 1000:.1f} ms"  # noqa: E731
    lines = [
        f"Model: Llama-shaped, {params / 1e6:.0f}M parameters ({cfg['num_hidden_layers']} layers, hidden "
        f"{cfg['hidden_size']}, vocab {cfg['vocab_size']}), random weights, fp32; adapters on "
        f"{', '.join(TARGETS)} with r = {args.rank} (a) and r = {args.rank // 2} (b), {len(converted.ranks)} "
        f"modules each. One call = one forward pass over 1 x N tokens on CPU (onnxruntime {ort.__version__}, "
        f"default threads, no spin-waiting). Per-call figures: median over {n} rounds, every case timed in each round (round "
        f"robin), each sample the mean of two back-to-back calls; new sessions: median of {args.sessions}. "
        f"Set-up (build, export, extract) took {setup:.0f} s.",
        "",
        f"**Switching adapters: a new session per adapter vs one session** (N = {seqs[-1]})",
        "",
        "| how the adapter changes | cost of one change | share of a new session |",
        "|---|---|---|",
        f"| new session per adapter (`make_inputs = false`, external initializers): create + first call "
        f"| {ms(new_session)} | 100% |",
    ]
    for label, key in (("`.onnx_adapter` via `RunOptions.add_active_adapter`", "RunOptions"),
                       ("weights fed as inputs (`.npz`)", "fed")):
        for seq in seqs:
            cost = per_call[seq][f"switch cost ({key})"]
            lines.append(f"| one session, {label}, N = {seq} | {ms(cost)} (call: {ms(per_call[seq]['same a, a (' + key + ')'])}) "
                         f"| {cost / new_session:+.2%} |")
    lines += [
        "",
        "A switch in one session is just a call that names another adapter (no session state changes). Its "
        "cost is measured per round as a call of an alternating a/b pair minus the mean of a steady a/a and "
        "b/b pair (same rounds, so machine load cancels), median over rounds; values around zero, negative "
        "ones included, are timing noise.",
        "",
        "**Latency per call with vs without adapter**",
        "",
        "| run | " + " | ".join(f"N = {seq}" for seq in seqs) + " |",
        "|---|" + "---|" * len(seqs),
    ]
    rows = (("base graph exported without LoRA", "base graph"),
            ("extracted graph, no adapter (zero-size defaults)", "no adapter"),
            (f"extracted graph, adapter a (r = {args.rank}, RunOptions)", "same a, a (RunOptions)"),
            (f"extracted graph, adapter a (r = {args.rank}, fed inputs)", "same a, a (fed)"),
            ("alternating a / b (RunOptions)", "switch a, b (RunOptions)"),
            ("external-initializer session with a baked in", "external, a"))
    for label, key in rows:
        cells = [f"{ms(per_call[seq][key])} ({per_call[seq][key] / per_call[seq]['base graph']:.2f}x)" for seq in seqs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "(x: relative to the base graph in the same rounds.)", ""]
    text = "\n".join(lines)
    if args.output:
        args.output.write_text(text)
    else:
        print(text)
    if tmp is not None:
        tmp.cleanup()
    return 0


def _shapes(base_dir: Path):
    from safetensors import safe_open

    for file in base_dir.glob("*.safetensors"):
        with safe_open(str(file), framework="numpy") as fh:
            for key in fh.keys():
                yield fh.get_slice(key).get_shape()


def _load(path: Path) -> dict[str, np.ndarray]:
    from hostkit_extract_adapters.weights import load_weights

    return load_weights(path).weights


if __name__ == "__main__":
    sys.exit(main())
