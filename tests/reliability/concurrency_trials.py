"""Two concurrent runs of one run file, N trials (issue 12.1's "must show").

    .venv/bin/python tests/reliability/concurrency_trials.py [--trials 10] [--stagger 0.3]

Not collected by pytest. Each trial starts ``hostkit run run.toml`` twice into one output folder
(the second ``--stagger`` seconds after the first; 0 = at once) and then checks what is on disk:

* every process ended with exit 0 (complete outputs) or exit 2 and one ERROR line (a clear refusal);
* ``manifest.json`` says ``ok``, lists both steps as ok/cached, and each listed folder exists with
  the content its options ask for; no ``.partial`` / ``.old`` folder and no unlisted step folder remains.

The run is two Echo steps of ~1 s each (sleep_s), so the two runs overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = '''[model]
type = "HfModel"
path = "m"
[[passes]]
type = "Echo"
message = "first"
repeat = 5
sleep_s = 0.2
[[passes]]
type = "Echo"
message = "second"
repeat = 5
sleep_s = 0.2
[output]
dir = "out"
'''
EXPECTED = {"01-echo": "first\n" * 5, "02-echo": "second\n" * 5}


def trial(stagger: float) -> dict:
    d = Path(tempfile.mkdtemp(prefix="hostkit-concurrent-"))
    try:
        (d / "m").mkdir()
        (d / "m" / "config.json").write_text("{}")
        (d / "run.toml").write_text(RUN)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("HOSTKIT_LOAD_PLUGINS", None)
        procs = []
        for i in range(2):
            if i:
                time.sleep(stagger)
            procs.append(subprocess.Popen([sys.executable, "-m", "hostkit", "run", "run.toml"], cwd=d, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        results = [(p.wait(timeout=300), p.stdout.read()) for p in procs]
        problems = []
        for code, output in results:
            errors = [line for line in output.splitlines() if line.startswith("ERROR")]
            if code == 0:
                continue
            if code == 2 and len(errors) == 1 and "Traceback" not in output:
                continue
            problems.append(f"exit {code}: {errors[-1] if errors else output.strip()[-200:]}")
        out = d / "out"
        try:
            manifest = json.loads((out / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            manifest = None
            problems.append(f"manifest unreadable: {exc}")
        if manifest is not None:
            if manifest.get("status") != "ok":
                problems.append(f"manifest status {manifest.get('status')!r}")
            steps = manifest.get("steps") or []
            listed = [s.get("folder") for s in steps]
            if listed != list(EXPECTED) or any(s.get("status") not in ("ok", "cached") for s in steps):
                problems.append(f"manifest steps {[(s.get('folder'), s.get('status')) for s in steps]}")
            for folder, text in EXPECTED.items():
                echo = out / folder / "echo.txt"
                if not echo.is_file() or echo.read_text() != text:
                    problems.append(f"{folder}/echo.txt {'missing' if not echo.is_file() else 'wrong'}")
        extra = sorted(p.name for p in out.iterdir() if p.name not in (*EXPECTED, "manifest.json")) \
            if out.is_dir() else []
        if extra:
            problems.append(f"left over: {', '.join(extra)}")
        return {"exits": [c for c, _ in results], "ok": not problems, "problems": problems}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--stagger", type=float, default=0.3, help="seconds between the two starts")
    args = parser.parse_args()
    good = 0
    for n in range(1, args.trials + 1):
        result = trial(args.stagger)
        good += result["ok"]
        print(f"trial {n:2}: exits {result['exits']}  {'ok' if result['ok'] else 'BAD: ' + '; '.join(result['problems'])}")
    print(f"{good}/{args.trials} trials ended with complete outputs or a clear refusal and a manifest that matches")
    return 0 if good == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
