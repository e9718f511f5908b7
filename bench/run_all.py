"""`make bench`: run every benchmark in bench/ and write bench/RESULTS.md.

Each `bench/bench_*.py` is run as `python bench/bench_X.py --output PART.md`
(a Markdown section of its figures, every comparison measured side by side in
the same run and quoted as a ratio). This script adds the machine and the
command that produced each section.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> str:
    import importlib.metadata as md

    versions = []
    for dist in ("torch", "transformers", "peft", "bitsandbytes", "onnxruntime", "onnxruntime-genai", "hostkit-core"):
        try:
            versions.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}; " + ", ".join(versions)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--only", nargs="*", help="run only these benchmarks (file stems)")
    args = parser.parse_args()
    benches = sorted(p for p in HERE.glob("bench_*.py") if not args.only or p.stem in args.only)
    sections = [
        "# Benchmark results",
        "",
        f"Machine: {machine()}.",
        f"Produced by `make bench` (`python bench/run_all.py`) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "Every comparison is measured side by side in the same run and quoted as a ratio.",
        "",
    ]
    failed = 0
    for bench in benches:
        with tempfile.TemporaryDirectory() as tmp:
            part = Path(tmp) / "part.md"
            command = [sys.executable, str(bench.relative_to(HERE.parent)), "--output", str(part)]
            shown = f"python {bench.relative_to(HERE.parent)}"
            print(f"== {shown}", flush=True)
            start = time.perf_counter()
            result = subprocess.run(command, cwd=HERE.parent)
            took = time.perf_counter() - start
            sections.append(f"## {bench.stem}\n\nCommand: `{shown}` ({took:.0f} s)\n")
            if result.returncode == 0 and part.exists():
                sections.append(part.read_text().strip() + "\n")
            else:
                failed += 1
                sections.append(f"**failed** (exit code {result.returncode})\n")
    args.output.write_text("\n".join(sections) + "\n")
    print(f"wrote {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
