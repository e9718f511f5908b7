"""Host overhead: start-up of the light commands and the cost around a trivial pass.

Measured side by side in one run (median of N), each as a ratio to a bare
`python -c pass` start-up, plus the list of heavy modules `hostkit plugins`
imports (goal: none).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "onnxruntime", "datasets", "onnx")


def wall(cmd: list[str], cwd: Path, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def heavy_imports(cwd: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "hostkit", "plugins"], cwd=cwd,
                         capture_output=True, text=True, check=True).stderr
    top = {line.split("|")[-1].strip().split(".")[0] for line in out.splitlines() if line.startswith("import time:")}
    return sorted(m for m in HEAVY if m in top)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", type=Path)
    parser.add_argument("-n", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "m").mkdir()
        (tmp / "run.toml").write_text('[model]\ntype = "HfModel"\npath = "m"\n[[passes]]\ntype = "Echo"\n'
                                      '[output]\ndir = "out"\ncache = false\n')
        py = [sys.executable]
        rows = [
            ("python -c pass (baseline)", py + ["-c", "pass"]),
            ("hostkit --help", py + ["-m", "hostkit", "--help"]),
            ("hostkit plugins", py + ["-m", "hostkit", "plugins"]),
            ("hostkit validate run.toml", py + ["-m", "hostkit", "validate", "run.toml"]),
            ("hostkit run run.toml (one Echo pass)", py + ["-m", "hostkit", "run", "run.toml"]),
        ]
        results = [(label, wall(cmd, tmp, args.n)) for label, cmd in rows]
        heavy = heavy_imports(tmp)
    base = results[0][1]
    lines = [f"Median of {args.n} runs each, all in this run.", "",
             "| command | wall time | ratio to bare python |", "|---|---|---|"]
    lines += [f"| `{label}` | {t * 1000:.0f} ms | {t / base:.1f}x |" for label, t in results]
    lines += ["", f"Heavy modules imported by `python -X importtime -m hostkit plugins`: {', '.join(heavy) or 'none'}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
