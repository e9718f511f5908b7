"""The end of `make demo`: both adapters from one onnxruntime session, base vs adapter accuracy.

Reads the manifest of `examples/quickstart.toml`'s run, converts the second
(currency) adapter to the extracted model's adapter format with
`hostkit convert-adapters --model ...` (which checks it fits the model), loads
both adapters into one `AdapterSession`, and answers the held-out questions of
each task with no adapter and with the task's adapter, switching per call.

    python examples/quickstart_report.py [runs/quickstart]
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = "Question: {question}\nAnswer:"


def steps_by_name(manifest: dict) -> dict[str, dict]:
    return {step["name"]: step for step in manifest["steps"] if step.get("name")}


def held_out(task: str) -> list[dict[str, str]]:
    with open(HERE / "data" / f"{task}_test.jsonl") as fh:
        return [json.loads(line) for line in fh]


def first_code(text: str) -> str:
    match = re.search(r"[A-Z]{2,3}", text)
    return match.group(0) if match else text.strip()[:8]


def main() -> int:
    run_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent / "runs" / "quickstart"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    steps = steps_by_name(manifest)
    extracted = steps["extracted"]["output"]
    currency_adapter = steps["currency"]["output"]["adapter_path"]
    model_path = extracted["path"]
    converted = run_dir / "currency.onnx_adapter"
    command = [sys.executable, "-m", "hostkit", "convert-adapters", "--adapter-path", currency_adapter,
               "--output-path", str(converted), "--model", model_path]
    print("$ hostkit convert-adapters --adapter-path", currency_adapter, "--output-path", converted, "--model", model_path,
          flush=True)
    result = subprocess.run(command)
    if result.returncode != 0:
        return result.returncode

    from hostkit_extract_adapters.infer import AdapterSession

    session = AdapterSession(model_path, tokenizer=extracted.get("tokenizer_path"))
    session.load_adapter("country", extracted["adapter_weights"])
    session.load_adapter("currency", converted)
    print(f"one onnxruntime session, adapters: {', '.join(session.adapters)}", flush=True)

    rows = []
    for task in ("country", "currency"):
        examples = held_out(task)
        scores = {}
        samples = []
        start = time.perf_counter()
        for adapter in (None, task):
            correct = 0
            for i, example in enumerate(examples):
                answer = session.generate(PROMPT.format(**example), adapter=adapter, max_new_tokens=4)
                got = first_code(answer)
                correct += got == example["answer"]
                if i < 2:
                    samples.append((adapter or "base", example["question"], example["answer"], answer.strip()))
            scores[adapter or "base"] = correct / len(examples)
            print(f"  {task}: {'adapter ' + adapter if adapter else 'base model'}: {correct}/{len(examples)} "
                  f"({time.perf_counter() - start:.0f}s)", flush=True)
        rows.append((task, len(examples), scores["base"], scores[task], samples))

    print()
    print("| task | held-out examples | base model | with its adapter |")
    print("|---|---|---|---|")
    for task, n, base, tuned, _ in rows:
        print(f"| {task} | {n} | {base:.0%} | {tuned:.0%} |")
    print()
    for task, _, _, _, samples in rows:
        for who, question, expected, answer in samples:
            print(f"[{task}/{who}] {question} -> {answer!r} (expected {expected})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
