"""Attack hostkit with malformed inputs and classify what a user sees (issue 12's before/after table).

    .venv/bin/python tests/reliability/attack.py [--slow] [--json FILE] [--only SUBSTRING]

Not collected by pytest (the name does not start with ``test_``). Every case runs in a fresh
temporary folder through the real CLI (``python -m hostkit``); a run file is first given to
``hostkit validate`` and, only when that accepts it, to ``hostkit run``. Each outcome is one of:

* ``validate``: refused up front (validate, or a command before any work) with exit 2 and an
  ERROR line naming the TOML path or the file;
* ``run``: failed while running with one clear ERROR line (no traceback, no "bug in the plugin");
* ``traceback``: a traceback or "bug in the plugin" for what is the user's (or the machine's) fault;
* ``accepted``: exit 0, the bad input went through without a word; ``warned``: exit 0 with a warning;
* ``unclear``: anything else (several ERROR lines for one problem, a killed process, a wrong exit code).

``--slow`` adds the cases that load torch (a corrupt model during a merge, a full disk during a
merge, a diverging LoRA run, a half-written checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import attrs

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from reliability.support import (BUG, TRACEBACK, build_toy_graph, echo_run, peft_config, toy_adapter,  # noqa: E402
                                 write_peft_folder)

PATH_TOKEN = re.compile(r"(^|\s|: )(model|output|data\.[\w-]+|passes(\[\d+\])?)([.\[:( ]|$)")


@attrs.define
class Case:
    name: str
    item: str                     # the item ("12.2", ...) or "held" for what held before
    files: dict[str, Any] = attrs.field(factory=dict)   # relative path -> str | bytes | callable(dir)
    args: list[str] = attrs.field(factory=lambda: ["RUNFILE"])  # RUNFILE: validate then run run.toml
    env: dict[str, str] = attrs.field(factory=dict)
    prepare: Callable[[Path], None] | None = None        # after files, before the command
    fsize: int | None = None      # RLIMIT_FSIZE for the run (a disk that fills up)
    slow: bool = False
    expect: str = "validate"      # the outcome a careful tool gives (validate, run, warned, accepted)
    exit: int | None = None       # the exit code it gives (default: 2 for validate, 1 for run, 0 otherwise)
    needle: str | None = None     # what its message must name (e.g. the file)


def _lora(options: str = "", training_args: str = "", model: str = "", output: str = "out") -> str:
    """A LoRA run file over the tiny Llama in ``base/`` (``prepare=_base``), 2 training steps."""
    return (f'[model]\ntype = "HfModel"\npath = "base"\n{model}\n[data.train]\ntype = "jsonl"\npath = "train.jsonl"\n'
            f'[[passes]]\ntype = "LoRA"\ntrain_data_config = "train"\n{options}\n[passes.training_args]\nmax_steps = 2\n'
            f'{training_args}\n[output]\ndir = "{output}"\n')


def _base(d: Path) -> None:
    _tiny(d, adapter=False)


def lora_case(name: str, item: str, text: str, **kw: Any) -> Case:
    return Case(name, item, {"run.toml": text}, prepare=_base, **kw)


def _echo(passes: str = "", **kw: Any) -> str:
    return echo_run(passes='[[passes]]\ntype = "Echo"\n' + passes, **kw)


def _two_echo() -> str:
    return echo_run(passes='[[passes]]\ntype = "Echo"\nmessage = "one"\n[[passes]]\ntype = "Echo"\n')


def _ran_once(extra: Callable[[Path], None]) -> Callable[[Path], None]:
    """Run the run file once successfully, then damage something with ``extra``."""

    def prepare(d: Path) -> None:
        subprocess.run([sys.executable, "-m", "hostkit", "run", "run.toml"], cwd=d, env=_env(), capture_output=True,
                       timeout=120, check=True)
        extra(d)

    return prepare


def _manifest(content: str) -> Callable[[Path], None]:
    def prepare(d: Path) -> None:
        (d / "out").mkdir(exist_ok=True)
        (d / "out" / "manifest.json").write_text(content)

    return prepare


def _extracted(d: Path) -> tuple[Path, Path]:
    from hostkit_extract_adapters.extract import extract_adapters

    src = build_toy_graph(d / "src" / "model.onnx", toy_adapter())
    result = extract_adapters(src, d / "extracted", save_format="numpy")
    return Path(result.model_path), Path(result.weights_path)


def _npz_with_metadata(metadata: Any) -> Callable[[Path], None]:
    import numpy as np

    def prepare(d: Path) -> None:
        _, weights = _extracted(d)
        with np.load(weights, allow_pickle=False) as data:
            arrays = {n: data[n] for n in data.files if n != "__metadata__"}
            meta = json.loads(str(data["__metadata__"]))
        value = metadata(meta) if callable(metadata) else metadata
        with open(d / "bad.npz", "wb") as fh:
            np.savez(fh, **arrays, __metadata__=np.array(json.dumps(value)))

    return prepare


def _sidecar_list(d: Path) -> None:
    import numpy as np

    from hostkit_extract_adapters.weights import save_weights

    _, weights = _extracted(d)
    with np.load(weights, allow_pickle=False) as data:
        arrays = {n: data[n] for n in data.files if n != "__metadata__"}
    save_weights(arrays, d / "bad", "onnx_adapter", {})
    (d / "bad.onnx_adapter.json").write_text("[1, 2]")


def _peft(config: Any, r: int = 2, garbage: bool = False) -> Callable[[Path], None]:
    def prepare(d: Path) -> None:
        write_peft_folder(d / "adapter", config, r=r)
        if garbage:
            (d / "adapter" / "adapter_model.safetensors").write_bytes(os.urandom(2048))

    return prepare


CONVERT = ["convert-adapters", "--adapter-path", "adapter", "--output-path", "w", "--adapter-format", "numpy"]
INFER_BAD = ["infer", "extracted/model.onnx", "--adapter", "bad=bad.npz", "--prompt", "hi"]

MISSPELT = '''
import attrs
from hostkit import PassSpec, hookimpl, option

@attrs.frozen
class WidgetConfig:
    size: int = option(1, help="a size")

@hookimpl
def hostkit_register(register):
    register.pass_type(PassSpec(name="Widget", config_cls=WidgetConfig, summary="a widget", run="hostkit_gadgets:run"))

@hookimpl
def hostkit_run_passs(pass_type, config, model, context):
    return None
'''


def _fake_plugin(d: Path) -> None:
    from host_helpers import make_fake_distribution

    make_fake_distribution(d / "site", dist="hostkit-gadgets", version="0.2", module="hostkit_gadgets",
                           entry_name="gadgets", source=MISSPELT)


def cases() -> list[Case]:
    held = [
        Case("non-UTF-8 run file", "held", {"run.toml": b'[model]\ntype = "HfModel"\npath = "m\xff"\n'}),
        Case("UTF-8 BOM", "held", {"run.toml": "\ufeff" + _echo()}),
        Case("duplicate key", "held", {"run.toml": _echo('message = "a"\nmessage = "b"\n')}),
        Case("TOML syntax error", "held", {"run.toml": _echo("message = \n")}),
        Case("empty run file", "held", {"run.toml": ""}),
        Case("run file is a folder", "held", {"run.toml/x": ""}),
        Case("run file missing", "held", args=["validate", "nope.toml"]),
        Case("unknown top-level table", "held", {"run.toml": _echo() + "[outptu]\ndir = 'x'\n"}),
        Case("missing [model]", "held", {"run.toml": '[[passes]]\ntype = "Echo"\n'}),
        Case("unknown model type", "held", {"run.toml": _echo().replace('"HfModel"', '"HFModle"')}),
        Case("model path missing", "held", {"run.toml": _echo(model="./nowhere")}),
        Case("unknown pass type", "held", {"run.toml": echo_run(passes='[[passes]]\ntype = "Ecko"\n')}),
        Case("no passes", "held", {"run.toml": echo_run(passes="")}),
        Case("passes = 3", "held", {"run.toml": echo_run(passes="passes = 3\n")}),
        Case("unknown option (typo)", "held", {"run.toml": _echo('mesage = "x"\n')}),
        Case("string for an int", "held", {"run.toml": _echo('repeat = "3"\n')}),
        Case("float for an int", "held", {"run.toml": _echo("repeat = 2.5\n")}),
        lora_case("string for a bool", "held", _lora(options='use_rslora = "false"')),
        Case("repeat = 0", "held", {"run.toml": _echo("repeat = 0\n")}),
        Case("choice not allowed", "held", {"run.toml": _echo('mode = "loud"\n')}),
        Case("unknown step input", "held", {"run.toml": _echo('input = "nothing"\n')}),
        Case("later step as input", "held", {"run.toml": echo_run(
            passes='[[passes]]\ntype = "Echo"\ninput = "b"\n[[passes]]\ntype = "Echo"\nname = "b"\n')}),
        Case("step name ../x", "held", {"run.toml": _echo('name = "../x"\n')}),
        Case("unicode step name", "held", {"run.toml": _echo('name = "schritt-\u00fc"\n')}),
        Case("undefined data config", "held", {"run.toml": _echo('train_data_config = "nope"\n')}),
        lora_case("data file missing", "held", _lora().replace("train.jsonl", "missing.jsonl")),
        lora_case("two text sources", "held", _lora().replace(
            'path = "train.jsonl"', 'path = "train.jsonl"\ntext_field = "a"\ntext_template = "{a}"')),
        lora_case("LoRA alpha = nan", "held", _lora(options="alpha = nan")),
        lora_case("lora_dropout = 1.5", "held", _lora(options="lora_dropout = 1.5")),
        lora_case("training_args typo", "held", _lora(training_args="learnin_rate = 1e-3")),
        lora_case("absolute training output_dir", "held", _lora(training_args='output_dir = "/tmp/x"')),
    ]
    defects = [
        Case("Echo scale = inf", "12.2", {"run.toml": _echo("scale = inf\n")}),
        Case("Echo scale = nan", "12.2", {"run.toml": _echo("scale = nan\n")}),
        Case("Echo sleep_s = -inf", "12.2", {"run.toml": _echo("sleep_s = -inf\n")}),
        lora_case("LoRA alpha = inf", "12.2", _lora(options="alpha = inf")),
        lora_case("learning_rate = inf", "12.2", _lora(training_args="learning_rate = inf")),
        lora_case("weight_decay = nan", "12.2", _lora(training_args="weight_decay = nan")),
        lora_case("trust_remote_code in load_kwargs", "12.3", _lora(model="load_kwargs = { trust_remote_code = true }"),
                  needle="model.load_kwargs: trust_remote_code"),
        Case("deleted output, re-run", "12.4", {"run.toml": _two_echo()},
             prepare=_ran_once(lambda d: (d / "out" / "01-echo" / "echo.txt").unlink()), expect="accepted",
             needle="echo.txt"),
        Case("output.dir = model folder", "12.6", {"run.toml": _echo(output="m")}),
        Case("output.dir inside model folder", "12.6", {"run.toml": _echo(output="m/runs")}),
        Case("output.dir is a file", "12.6", {"run.toml": _echo(output="file.txt"), "file.txt": "x"}),
        Case("model.path is a file", "12.6", {"run.toml": _echo(model="file.txt"), "file.txt": "x"}),
        lora_case("training output_dir ../../../escaped", "12.6", _lora(training_args='output_dir = "../../../escaped"')),
        Case("300-character step name", "12.6", {"run.toml": _echo(f'name = "{"n" * 300}"\n')}),
        Case("manifest []", "12.7", {"run.toml": _two_echo()}, prepare=_manifest("[]"), expect="warned",
             needle="corrupt"),
        Case("manifest steps null", "12.7", {"run.toml": _two_echo()}, prepare=_manifest('{"steps": null}'),
             expect="warned",
             needle="corrupt"),
        Case("manifest steps [1, 2]", "12.7", {"run.toml": _two_echo()}, prepare=_manifest('{"steps": [1, 2]}'),
             expect="warned", needle="corrupt"),
        Case("manifest a string", "12.7", {"run.toml": _two_echo()}, prepare=_manifest('"x"'), expect="warned",
             needle="corrupt"),
        Case("manifest not JSON", "12.7", {"run.toml": _two_echo()}, prepare=_manifest('{"steps": ['),
             expect="warned",
             needle="corrupt"),
        Case("full disk inside a step", "12.8",
             {"run.toml": _echo(f'message = "{"x" * 999}"\nrepeat = 200\n')}, fsize=64 * 1024, expect="run",
             needle="/out"),
        Case("full disk: step fails, then the manifest", "12.8",
             {"run.toml": _echo(f'message = "{"x" * 2000}"\n')}, fsize=1024, expect="run", needle="passes[0] (Echo)"),
        Case("convert: adapter_config []", "12.8", args=CONVERT, prepare=_peft("[]"), needle="adapter_config.json"),
        Case("convert: adapter_config 42", "12.8", args=CONVERT, prepare=_peft("42"), needle="adapter_config.json"),
        Case("convert: string r", "12.8", args=CONVERT, prepare=_peft(peft_config(r="2")), needle="adapter_config.json"),
        Case("convert: string lora_alpha", "12.8", args=CONVERT, prepare=_peft(peft_config(lora_alpha="4")),
             needle="adapter_config.json"),
        Case("convert: garbage weights", "12.8", args=CONVERT, prepare=_peft(peft_config(), garbage=True),
             needle="adapter_model.safetensors"),
        Case("infer: npz __metadata__ a list", "12.8", args=INFER_BAD, prepare=_npz_with_metadata([1, 2]),
             needle="bad.npz"),
        Case("infer: sidecar .json a list", "12.8",
             args=["infer", "extracted/model.onnx", "--adapter", "bad=bad.onnx_adapter", "--prompt", "hi"],
             prepare=_sidecar_list, needle="bad.onnx_adapter"),
        Case("infer: other base without digest", "12.9", args=INFER_BAD,
             prepare=_npz_with_metadata(lambda m: {**m, "hostkit.base_model": "some-org/other-base"}),
             needle="some-org/other-base"),
        Case("convert: adapter_config {}", "12.9", args=CONVERT, prepare=_peft({}, r=8), needle="lora_alpha"),
        lora_case("LoRA r over 64 bits", "12.10", _lora(options="r = 1180591620717411303424")),
        lora_case("per_device_train_batch_size = 0", "12.10", _lora(training_args="per_device_train_batch_size = 0")),
        Case("HOSTKIT_LOAD_PLUGINS=Echo", "12.10", {"run.toml": _echo()}, env={"HOSTKIT_LOAD_PLUGINS": "Echo"},
             expect="accepted"),
        Case("HOSTKIT_DISABLE_PLUGINS=no_such", "12.10", {"run.toml": _echo()},
             env={"HOSTKIT_DISABLE_PLUGINS": "no_such"}, expect="warned", needle="no_such"),
        Case("misspelt hook, other pass name", "12.10", {"run.toml": echo_run(passes='[[passes]]\ntype = "Widget"\n')},
             prepare=_fake_plugin, env={"PYTHONPATH": "site"}, exit=3, needle="hostkit-gadgets"),
    ]
    return held + defects + slow_cases()


def slow_cases() -> list[Case]:
    out = []

    def merge_with(how: str) -> Callable[[Path], None]:
        def prepare(d: Path) -> None:
            base = _tiny(d)
            if how:
                data = (base / "model.safetensors").read_bytes()
                (base / "model.safetensors").write_bytes(
                    {"truncated": data[: len(data) // 2], "random": os.urandom(4096), "empty": b""}[how])

        return prepare

    merge = ('[model]\ntype = "HfModel"\npath = "base"\nadapter_path = "adapter"\n'
             '[[passes]]\ntype = "MergeAdapterWeights"\n[output]\ndir = "out"\n')
    for how in ("truncated", "random", "empty"):
        out.append(Case(f"merge: {how} model.safetensors", "12.8", {"run.toml": merge}, prepare=merge_with(how),
                        slow=True, expect="run", needle="model.safetensors"))
    out.append(Case("merge: full disk", "12.8", {"run.toml": merge}, prepare=merge_with(""), fsize=200_000, slow=True,
                    expect="run", needle="/out"))
    lora = ('[model]\ntype = "HfModel"\npath = "base"\n[data.train]\ntype = "jsonl"\npath = "train.jsonl"\n'
            'max_seq_len = 24\n[[passes]]\ntype = "LoRA"\nr = 4\ntrain_data_config = "train"\n'
            'target_modules = "all-linear"\n[passes.training_args]\nmax_steps = 8\nper_device_train_batch_size = 2\n'
            'learning_rate = 1e30\n[output]\ndir = "out"\n')
    out.append(Case("LoRA loss becomes NaN", "12.2", {"run.toml": lora}, prepare=_base,
                    slow=True, expect="run", needle="step"))
    return out


_TINY: dict[str, Path] = {}


def _tiny(d: Path, adapter: bool = True) -> Path:
    """The tiny Llama (built once) copied to ``d/base``, a LoRA adapter for it in ``d/adapter``."""
    if "base" not in _TINY:
        from hostkit.testing.tiny import build_tiny_llama, make_lora_adapter

        root = Path(tempfile.mkdtemp(prefix="hostkit-attack-model-"))
        _TINY["base"] = build_tiny_llama(root / "tiny")
        _TINY["adapter"] = make_lora_adapter(_TINY["base"], root / "adapter", seed=1)
    base = Path(shutil.copytree(_TINY["base"], d / "base"))
    if adapter:
        shutil.copytree(_TINY["adapter"], d / "adapter")
    return base


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HOSTKIT_LOAD_PLUGINS", "HOSTKIT_DISABLE_PLUGINS")}
    env.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.update(extra or {})
    return env


def _run(args: list[str], d: Path, case: Case) -> tuple[int, str]:
    env = _env(case.env)
    if "PYTHONPATH" in case.env:
        env["PYTHONPATH"] = str(d / case.env["PYTHONPATH"]) + os.pathsep + os.environ.get("PYTHONPATH", "")

    def limit() -> None:
        if case.fsize:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (case.fsize, case.fsize))

    try:
        done = subprocess.run([sys.executable, "-m", "hostkit", *args], cwd=d, env=env, capture_output=True,
                              text=True, timeout=300, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return -9, "timed out"
    return done.returncode, done.stdout + done.stderr


def classify(stage: str, code: int, output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    if TRACEBACK in output or BUG in output:
        return "traceback"
    if code == 0:
        return "accepted"
    named = any(PATH_TOKEN.search(line) or "/" in line for line in errors)
    if stage == "validate" and code in (2, 3) and errors and named:
        return "validate"
    if stage != "validate" and code in (1, 2, 3) and len(errors) == 1:
        return "run"
    return "unclear"


def _told(output: str, expect: str) -> str:
    """What the user is told about the problem: the ERROR lines, or for a run that goes on, every line but
    the header (which repeats the run file and output paths anyway)."""
    lines = output.splitlines()
    if expect in ("validate", "run"):
        return "\n".join(line for line in lines if line.startswith("ERROR") or line.startswith("  "))
    return "\n".join(line for line in lines if not line.startswith(("run: ", "hostkit ", "done: ")))


def attack(case: Case) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix="hostkit-attack-"))
    try:
        (d / "m").mkdir()
        (d / "m" / "config.json").write_text("{}")
        (d / "train.jsonl").write_text('{"text": "one two three"}\n' * 8)
        for rel, content in case.files.items():
            path = d / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        if case.prepare is not None:
            case.prepare(d)
        start = time.perf_counter()
        if case.args == ["RUNFILE"]:
            code, output = _run(["validate", "run.toml"], d, case)
            stage = "validate"
            if code == 0:
                code, output = _run(["run", "run.toml"], d, case)
                stage = "run"
        else:
            code, output = _run(case.args, d, case)
            stage = "validate" if code == 2 else "run"
        outcome = classify(stage, code, output)
        warned = outcome == "accepted" and "warning" in output.lower()
        if warned:
            outcome = "warned"
        expected_exit = case.exit if case.exit is not None else {"validate": 2, "run": 1}.get(case.expect, 0)
        careful = (outcome == case.expect or (case.expect == "accepted" and outcome == "warned")) \
            and code == expected_exit and (case.needle is None or case.needle in _told(output, case.expect))
        errors = [line for line in output.splitlines() if line.startswith("ERROR") or "Error:" in line]
        said = (errors[-1] if errors else output.strip().splitlines()[-1] if output.strip() else "")
        return {"case": case.name, "item": case.item, "exit": code, "outcome": outcome, "careful": careful,
                "expected": f"{case.expect}, exit {expected_exit}" + (f", names {case.needle!r}" if case.needle else ""),
                "said": said.replace(str(d), "<tmp>")[:160], "seconds": round(time.perf_counter() - start, 1)}
    finally:
        shutil.rmtree(d, ignore_errors=True)


COLUMNS = ("validate", "run", "traceback", "accepted", "warned", "unclear")


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| cases | rejected up front, path, exit 2 | failing at run time, one clear line | tracebacks "
             "| accepted silently | accepted with a warning | unclear | as a careful tool would |",
             "|---|---|---|---|---|---|---|---|"]
    for label, rows in (("all", results), ("held before (regression guard)", [r for r in results if r["item"] == "held"]),
                        ("issue 12 items", [r for r in results if r["item"] != "held"])):
        count = {c: sum(r["outcome"] == c for r in rows) for c in COLUMNS}
        careful = sum(r["careful"] for r in rows)
        lines.append(f"| {label}: {len(rows)} | {count['validate']} | {count['run']} | {count['traceback']} "
                     f"| {count['accepted']} | {count['warned']} | {count['unclear']} | {careful} |")
    lines += ["", "| item | case | exit | outcome | careful? (expected) | what it said |", "|---|---|---|---|---|---|"]
    for r in results:
        said = r["said"].replace("|", "\\|")
        verdict = "yes" if r["careful"] else f"no ({r['expected']})"
        lines.append(f"| {r['item']} | {r['case']} | {r['exit']} | {r['outcome']} | {verdict} | {said} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", action="store_true", help="add the cases that load torch")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--only", help="only cases whose name contains this")
    args = parser.parse_args(argv)
    selected = [c for c in cases() if (args.slow or not c.slow) and (not args.only or args.only in c.name)]
    results = []
    for case in selected:
        result = attack(case)
        print(f"  {result['outcome']:9} exit {result['exit']:>3}  {'ok ' if result['careful'] else 'BAD'} "
              f"{case.item:5} {case.name}", file=sys.stderr)
        results.append(result)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
