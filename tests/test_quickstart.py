"""The quickstart's data and scorers: deterministic, held-out entities unseen, answers parsed leniently but exactly."""

from __future__ import annotations

import datetime
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DATA = EXAMPLES / "data"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _module("quickstart_report")


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


def test_committed_data_is_what_the_script_writes(tmp_path):
    subprocess.run([sys.executable, str(EXAMPLES / "make_quickstart_data.py"), "--output", str(tmp_path)],
                   check=True, capture_output=True)
    for task in report.TASKS:
        for split in ("train", "test"):
            name = f"{task}_{split}.jsonl"
            assert (tmp_path / name).read_text() == (DATA / name).read_text(), name


@pytest.mark.parametrize("task", ["dates", "shipments"])
def test_held_out_examples_share_no_entity_with_training(task):
    train, test = _rows(f"{task}_train.jsonl"), _rows(f"{task}_test.jsonl")
    assert len(test) >= 50 and len(train) >= 10 * len(test) // 2
    if task == "dates":
        years = lambda rows: {r["answer"][:4] for r in rows}  # noqa: E731
        assert not years(train) & years(test)
    else:
        fields = lambda rows, key: {json.loads(r["answer"])[key] for r in rows}  # noqa: E731
        for key in ("item", "region", "country"):
            assert not fields(train, key) & fields(test, key), key
        # every value of the answer is written in the sentence: the task is extraction, not recall
        for row in train + test:
            answer = json.loads(row["answer"])
            assert all(str(value) in row["input"] for value in answer.values()), row


def test_date_answers_are_the_dates_in_the_sentences():
    data = _module("make_quickstart_data")
    months = {**{m: i + 1 for i, m in enumerate(data.MONTHS)}, **{m[:3]: i + 1 for i, m in enumerate(data.MONTHS)}}
    for row in _rows("dates_train.jsonl") + _rows("dates_test.jsonl"):
        date = datetime.date.fromisoformat(row["answer"])
        assert str(date.year) in row["input"] and str(date.day) in row["input"]
        mentioned = re.findall(r"\b(" + "|".join(months) + r")\b", row["input"])
        assert months[mentioned[0]] == date.month, row
        names = "|".join(datetime.date(2024, 1, d).strftime("%A|%a") for d in range(1, 8))
        weekday = re.search(rf"\b({names}),", row["input"])
        if weekday:
            assert date.strftime("%a") == weekday.group(1)[:3], row


def test_prompt_is_the_training_chat_without_its_answer():
    row = _rows("shipments_test.jsonl")[0]
    shots = _rows("shipments_train.jsonl")[:2]
    messages = report.prompt_messages(row, shots)
    # the instruction is the system turn (once), then the shots' solved turns, then the sentence
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[0] == row["messages"][0] and messages[0]["content"] == shots[0]["messages"][0]["content"]
    assert messages[-1] == row["messages"][1] and messages[2] == shots[0]["messages"][2]
    assert report.prompt_messages(row) == row["messages"][:-1]


def test_table_has_a_few_shot_column_only_when_it_ran():
    rows = [{}] * 50
    scores = {"base": 0.1, "base 3-shot": 0.5, "adapter torch": 0.9, "adapter deployed": 0.88}
    results = [("dates", rows, None, scores, {"adapter torch": 60.4, "adapter deployed": 40.0})]
    plain = report.table(results, None, "onnxruntime-genai int4")
    assert plain[0].count("|") == plain[1].count("|") == plain[2].count("|") == 7
    assert plain[2] == "| dates | 50 | 10% | 90% | 88% | 60 / 40 |"
    few = report.table(results, "base 3-shot", "onnxruntime-genai int4")
    assert "base 3-shot" in few[0] and few[2] == "| dates | 50 | 10% | 50% | 90% | 88% | 60 / 40 |"


@pytest.mark.parametrize("text, expected", [
    ("1987-03-05", "1987-03-05"),
    ("The date is 1987-3-5.", "1987-03-05"),
    ("1987/03/05 and 1990-01-01", "1987-03-05"),
    ("March 5, 1987", None),
    ("19870-03-05", None),
])
def test_parse_date(text, expected):
    assert report.parse_date(text) == expected


def test_parse_shipment_is_lenient_about_layout_but_exact_about_values():
    want = report.parse_shipment('{"item": "kayaks", "quantity": 15, "region": "Kidal", "country": "Mali"}')
    assert want == {"item": "kayaks", "quantity": 15, "region": "kidal", "country": "mali"}
    fenced = '```json\n{\n  "Item": " Kayaks",\n  "quantity": "15",\n  "region": "Kidal",\n  "country": "Mali"\n}\n```'
    assert report.parse_shipment(fenced) == want
    assert report.parse_shipment('{"item": "kayak", "quantity": 15, "region": "Kidal", "country": "Mali"}') != want
    assert report.parse_shipment('{"item": "kayaks", "quantity": 15, "region": "Kidal"') is None
    assert report.parse_shipment("no JSON here") is None


def test_answered_waits_for_a_complete_answer():
    assert not report.answered("dates", "1987-03-0")
    assert not report.answered("dates", "1987-03-05")      # a digit may follow
    assert report.answered("dates", "1987-03-05.")
    assert not report.answered("shipments", '{"item": "kayaks"')
    assert report.answered("shipments", '{"item": "kayaks"}')
