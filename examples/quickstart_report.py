"""The end of `make demo`: base model vs LoRA adapters, in torch and deployed, on held-out examples.

Reads the manifest of `examples/quickstart.toml`'s run and scores each task's
held-out set (examples/data/<task>_test.jsonl) four ways, all greedy and through
the model's chat template with the same instruction and the same lenient parser:

* the base model, zero-shot, and with a few solved training examples as earlier
  chat turns (few-shot: the best a user can do without training);
* the base with the task's LoRA adapter in torch (PEFT, fp32): both adapters
  are loaded on one model and switched per batch;
* the deployed model: one onnxruntime session serving both adapters, switched
  per request.

    python examples/quickstart_report.py [runs/quickstart] [--shots N] [--data DIR]

``--shots 3`` adds the few-shot column (off by default: its prompts are four
times as long, which more than doubles the report's time on 2 cores).
``--data`` reads the held-out sets from another folder (a run on data written
with another ``make_quickstart_data.py --seed``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

HERE = Path(__file__).resolve().parent
TASKS = ("dates", "shipments")
SHOTS = 0             # few-shot baseline: opt-in (--shots 3)
#: new tokens per answer: an ISO date is 7 tokens, a shipment object about 30
MAX_NEW_TOKENS = {"dates": 12, "shipments": 40}
SHIPMENT_KEYS = ("item", "quantity", "region", "country")


# -- scoring: exact match of the parsed answer ---------------------------------------

DATE = re.compile(r"(?<!\d)(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?!\d)")


def parse_date(text: str) -> str | None:
    """The first date written year-month-day (``1987-03-05``, ``1987-3-5``, ``1987/03/05``), as ISO."""
    match = DATE.search(text)
    if not match:
        return None
    year, month, day = match.groups()
    return f"{year}-{int(month):02d}-{int(day):02d}"


def parse_shipment(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (fences and prose around it are ignored), reduced to the four keys.

    Keys are matched case-insensitively, strings are compared stripped and
    case-insensitively, a quantity written as a string of digits counts as the number.
    """
    decoder = json.JSONDecoder()
    for start in [m.start() for m in re.finditer(r"\{", text)]:
        try:
            value, _ = decoder.raw_decode(text[start:])
        except ValueError:
            continue
        if isinstance(value, dict):
            lowered = {str(k).strip().lower(): v for k, v in value.items()}
            out = {}
            for key in SHIPMENT_KEYS:
                item = lowered.get(key)
                if isinstance(item, str):
                    item = item.strip()
                    item = int(item) if key == "quantity" and item.isdigit() else item.lower()
                out[key] = item
            return out
    return None


def answered(task: str, text: str) -> bool:
    """Whether ``text`` holds a complete answer already (more tokens could not change its parse)."""
    if task == "dates":
        match = DATE.search(text)
        return match is not None and match.end() < len(text)   # a non-digit follows: the day is complete
    return parse_shipment(text) is not None


def expected(task: str, row: dict) -> Any:
    return parse_date(row["answer"]) if task == "dates" else parse_shipment(row["answer"])


def correct(task: str, answer: str, row: dict) -> bool:
    got = parse_date(answer) if task == "dates" else parse_shipment(answer)
    return got is not None and got == expected(task, row)


# -- prompts ---------------------------------------------------------------------------

def rows_of(path: Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def prompt_messages(row: dict, shots: Sequence[dict] = ()) -> list[dict[str, str]]:
    """The row's chat without its answer; shots are earlier solved turns (same instruction)."""
    messages = [dict(m) for m in row["messages"][:-1]]
    earlier = [dict(m) for shot in shots for m in shot["messages"] if m["role"] != "system"]
    head = [m for m in messages if m["role"] == "system"]
    return head + earlier + [m for m in messages if m["role"] != "system"]


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# -- generation ------------------------------------------------------------------------

class Progress:
    """One line per evaluation batch: what, how far, how fast."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.done, self.tokens, self.start = label, total, 0, 0, time.perf_counter()

    def update(self, examples: int, tokens: int) -> None:
        self.done += examples
        self.tokens += tokens
        elapsed = time.perf_counter() - self.start
        print(f"    {self.label}: {self.done}/{self.total} ({elapsed:.0f}s, {self.tokens / elapsed:.0f} tokens/s)",
              flush=True)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(time.perf_counter() - self.start, 1e-9)


class Decoder:
    """What a generation loop needs of the task: the token ids that end an answer, and when one is complete.

    Generation of a row stops at EOS, at ``max_new_tokens``, or as soon as its
    text holds a complete answer (:func:`answered`): the parser reads the first
    date or object, so later tokens could not change the score.
    """

    def __init__(self, tokenizer: Any, task: str, max_new_tokens: int):
        self.tokenizer, self.task, self.max_new_tokens = tokenizer, task, max_new_tokens
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.eos_id

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def finished(self, ids: list[int]) -> bool:
        return bool(ids) and (ids[-1] == self.eos_id or len(ids) >= self.max_new_tokens
                              or answered(self.task, self.text(ids)))

    def trim(self, ids: list[int]) -> list[int]:
        return ids[:ids.index(self.eos_id)] if self.eos_id in ids else ids


def left_padded(prompts: Sequence[list[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    width = max(len(p) for p in prompts)
    return ([[pad_id] * (width - len(p)) + list(p) for p in prompts],
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts])


def torch_generate(model: Any, prompts: list[list[int]], decoder: Decoder, *, batch_size: int,
                   progress: Progress) -> list[list[int]]:
    """Greedy answers of a torch model (transformers' ``generate``), batched with left padding."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Answered(StoppingCriteria):
        def __init__(self, width: int):
            self.width = width

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            rows = input_ids[:, self.width:].tolist()
            return torch.tensor([decoder.finished(row) for row in rows], dtype=torch.bool)

    answers: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_padded(prompts[start:start + batch_size], decoder.pad_id)
        width = len(ids[0])
        with torch.inference_mode():
            out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                                 max_new_tokens=decoder.max_new_tokens, do_sample=False,
                                 pad_token_id=decoder.pad_id, eos_token_id=decoder.eos_id,
                                 stopping_criteria=StoppingCriteriaList([Answered(width)]))
        rows = [decoder.trim(row) for row in out[:, width:].tolist()]
        answers += rows
        progress.update(len(rows), sum(len(row) for row in rows))
    return answers


def ort_generate(session: Any, adapter: str | None, prompts: list[list[int]], decoder: Decoder, *,
                 batch_size: int, progress: Progress) -> list[list[int]]:
    """Greedy answers of an ``AdapterSession`` (plain onnxruntime, KV cache), batched with left padding."""
    import numpy as np

    graph = session.session_for(adapter)
    inputs = {value.name: value for value in graph.get_inputs()}
    pasts = [name for name in inputs if name.startswith("past_key_values.")]
    presents = ["present." + name[len("past_key_values."):] for name in pasts]
    int_type = lambda name: np.int32 if "int32" in inputs[name].type else np.int64  # noqa: E731
    answers: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = (np.array(a) for a in left_padded(prompts[start:start + batch_size], decoder.pad_id))
        batch = len(ids)
        positions = np.clip(mask.cumsum(axis=1) - 1, 0, None)
        feed = {"input_ids": ids.astype(int_type("input_ids")),
                "attention_mask": mask.astype(int_type("attention_mask"))}
        if "position_ids" in inputs:
            feed["position_ids"] = positions.astype(int_type("position_ids"))
        for name in pasts:
            shape = [batch if i == 0 else (d if isinstance(d, int) else 0) for i, d in enumerate(inputs[name].shape)]
            feed[name] = np.zeros(shape, dtype=np.float16 if "float16" in inputs[name].type else np.float32)
        rows: list[list[int]] = [[] for _ in range(batch)]
        done = [False] * batch
        last = positions[:, -1]
        for index in range(decoder.max_new_tokens):
            step = f"prefill of {batch} prompts" if index == 0 else f"decoding token {index + 1}"
            results = session.run(feed, adapter=adapter, output_names=["logits", *presents], step=step)
            tokens = results[0][:, -1].argmax(axis=-1)
            for b in range(batch):
                if not done[b]:
                    rows[b].append(int(tokens[b]))
                    done[b] = decoder.finished(rows[b])
            if all(done):
                break
            last = last + 1
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=mask.dtype)], axis=1)
            feed = {"input_ids": tokens[:, None].astype(int_type("input_ids")),
                    "attention_mask": mask.astype(int_type("attention_mask"))}
            if "position_ids" in inputs:
                feed["position_ids"] = last[:, None].astype(int_type("position_ids"))
            feed.update(zip(pasts, results[1:]))
        rows = [decoder.trim(row) for row in rows]
        answers += rows
        progress.update(len(rows), sum(len(row) for row in rows))
    return answers


# -- the report ------------------------------------------------------------------------

BATCH = 30            # evaluation batch (torch and onnxruntime)


def steps_by_name(manifest: dict) -> dict[str, dict]:
    return {step["name"]: step for step in manifest["steps"] if step.get("name")}


def run_seconds(manifest: dict) -> float:
    from datetime import datetime

    fmt = "%Y-%m-%dT%H:%M:%S%z"
    return (datetime.strptime(manifest["finished"], fmt) - datetime.strptime(manifest["started"], fmt)).total_seconds()


def table(results: Sequence[tuple], few_label: str | None, deployed_label: str) -> list[str]:
    """The report's table in Markdown: one row per task, the few-shot column only when it ran."""
    few_head = f" {few_label} |" if few_label else ""
    lines = [f"| task | held-out | base |{few_head} adapter, torch fp32 | adapter, deployed ({deployed_label}) "
             "| tokens/s torch / deployed |",
             "|---|---|---|" + ("---|" if few_label else "") + "---|---|---|"]
    for task, rows, _, scores, speed in results:
        few = f" {scores[few_label]:.0%} |" if few_label else ""
        lines.append(f"| {task} | {len(rows)} | {scores['base']:.0%} |{few} {scores['adapter torch']:.0%} | "
                     f"{scores['adapter deployed']:.0%} | {speed['adapter torch']:.0f} / "
                     f"{speed['adapter deployed']:.0f} |")
    return lines


class Deployed:
    """The deployed model: one session, both adapters, the adapter chosen per request.

    With a ModelBuilder step in the run (int4 onnxruntime-genai model) the
    extracted genai folder is served by ``GenaiSession``; otherwise the
    extracted plain-ONNX model by ``AdapterSession``.
    """

    def __init__(self, steps: dict[str, dict], adapters: dict[str, str]):
        extracted = steps["extracted"]["output"]
        self.path = extracted["path"]
        builder = next((step for step in steps.values() if step["type"].lower() == "modelbuilder"), None)
        if builder is not None:
            from hostkit_extract_adapters.genai import GenaiSession

            options = builder.get("options", {})
            precision = options.get("precision", "int4")
            scheme = options.get("int4_scheme", "builder") if precision == "int4" else "builder"
            self.session: Any = GenaiSession(Path(self.path).parent if Path(self.path).is_file() else self.path)
            self.label = f"onnxruntime-genai {precision}" + (f" {scheme}" if scheme != "builder" else "")
        else:
            from hostkit_extract_adapters.infer import AdapterSession

            self.session = AdapterSession(self.path, tokenizer=extracted.get("tokenizer_path"))
            self.label = "onnxruntime fp32"
        self.genai = builder is not None
        for name, folder in adapters.items():
            self.session.load_adapter(name, folder)      # a PEFT folder, converted and checked against the graph

    def generate(self, adapter: str | None, prompts: list[list[int]], decoder: Decoder,
                 progress: Progress) -> list[list[int]]:
        if not self.genai:
            return ort_generate(self.session, adapter, prompts, decoder, batch_size=BATCH, progress=progress)
        answers: list[list[int]] = []
        for i, prompt in enumerate(prompts):      # genai: one generator per request
            row: list[int] = []
            for token in self.session.iter_ids(prompt, adapter=adapter, max_new_tokens=decoder.max_new_tokens):
                row.append(token)
                if decoder.finished(row):
                    break
            answers.append(decoder.trim(row))
            if (i + 1) % BATCH == 0 or i + 1 == len(prompts):
                done = answers[-((i % BATCH) + 1):]
                progress.update(len(done), sum(len(r) for r in done))
        return answers


def main() -> int:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", type=Path, default=HERE.parent / "runs" / "quickstart")
    parser.add_argument("--shots", type=int, default=SHOTS,
                        help="solved training examples in a few-shot baseline column (default 0: no such column)")
    parser.add_argument("--data", type=Path, default=HERE / "data",
                        help="folder of <task>_train.jsonl / <task>_test.jsonl (default examples/data)")
    args = parser.parse_args()
    run_dir, n_shots, data = args.run_dir, args.shots, args.data
    few_label = f"base {n_shots}-shot"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    steps = steps_by_name(manifest)
    adapters = {task: steps[task]["output"]["adapter_path"] for task in TASKS}
    base_path = steps[TASKS[0]]["output"]["path"]

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(adapters[TASKS[0]])
    tokenizer.padding_side = "left"
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, adapters[TASKS[0]], adapter_name=TASKS[0])
    for task in TASKS[1:]:
        model.load_adapter(adapters[task], adapter_name=task)
    print(f"torch: {base_path} + adapters {', '.join(TASKS)} (PEFT, fp32)", flush=True)
    deployed = Deployed(steps, adapters)
    print(f"deployed: {deployed.path} ({deployed.label}), adapters: {', '.join(TASKS)}, switched per request",
          flush=True)

    results = []
    for task in TASKS:
        rows = rows_of(data / f"{task}_test.jsonl")
        shots = rows_of(data / f"{task}_train.jsonl")[:n_shots]
        decoder = Decoder(tokenizer, task, MAX_NEW_TOKENS[task])
        zero = [prompt_ids(tokenizer, prompt_messages(row)) for row in rows]
        answers, speed = {}, {}
        runs: list[tuple[str, Callable[[Progress], list[list[int]]]]] = []

        def base_run(prompts: list[list[int]]) -> Callable[[Progress], list[list[int]]]:
            def go(progress: Progress) -> list[list[int]]:
                with model.disable_adapter():
                    return torch_generate(model, prompts, decoder, batch_size=BATCH, progress=progress)
            return go

        def adapter_run(progress: Progress) -> list[list[int]]:
            model.set_adapter(task)
            return torch_generate(model, zero, decoder, batch_size=BATCH, progress=progress)

        runs = [("base", base_run(zero))]
        if n_shots > 0:
            runs.append((few_label, base_run([prompt_ids(tokenizer, prompt_messages(row, shots)) for row in rows])))
        runs += [("adapter torch", adapter_run),
                 ("adapter deployed", lambda progress: deployed.generate(task, zero, decoder, progress))]
        for label, go in runs:
            progress = Progress(f"{task}, {label}", len(rows))
            answers[label] = [decoder.text(ids) for ids in go(progress)]
            speed[label] = progress.tokens_per_s
        scores = {label: sum(correct(task, text, row) for text, row in zip(texts, rows)) / len(rows)
                  for label, texts in answers.items()}
        results.append((task, rows, answers, scores, speed))

    with open(run_dir / "quickstart_answers.json", "w") as fh:
        json.dump({task: [{"input": row["input"], "expected": row["answer"],
                           **{label: texts[i] for label, texts in answers.items()}} for i, row in enumerate(rows)]
                   for task, rows, answers, _, _ in results}, fh, indent=1, ensure_ascii=False)
    print()
    for line in table(results, few_label if n_shots > 0 else None, deployed.label):
        print(line)
    for task, rows, answers, _, _ in results:
        same = sum(a == b for a, b in zip(answers["adapter torch"], answers["adapter deployed"]))
        print(f"{task}: the deployed model gives the same answer as torch PEFT on {same} of {len(rows)} examples")
    print()
    for task, rows, answers, _, _ in results:
        for i in range(3):
            print(f"[{task}] {rows[i]['input']}")
            print(f"    expected  {rows[i]['answer']}")
            for label, shown in (("base", "base"), ("adapter torch", "torch"), ("adapter deployed", "deployed")):
                mark = "ok" if correct(task, answers[label][i], rows[i]) else "wrong"
                print(f"    {shown:<9} {answers[label][i].strip()!r} ({mark})")
    print()
    print("artefacts:")
    for task in TASKS:
        folder = run_dir / steps[task]["folder"]
        print(f"  {task} adapter (PEFT):  {adapters[task]}")
        print(f"  {task} loss plot:       {folder / 'loss.png'}")
    print(f"  deployed model:        {deployed.path}")
    print(f"  every answer:          {run_dir / 'quickstart_answers.json'}")
    print(f"  run manifest:          {run_dir / 'manifest.json'}")
    print(f"time: hostkit run {run_seconds(manifest):.0f}s (cached steps excluded), "
          f"this report {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
