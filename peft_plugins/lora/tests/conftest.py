"""Fixtures of hostkit-lora's tests: small local data files and one torch thread.

The CI machines have 2 cores shared by several jobs; torch's default of one
thread per core makes tiny-model steps 10-50x slower under contention (measured:
0.5 s vs 0.01 s per step), so these tests train with one thread.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

WORDS = "one two three four five six seven eight nine ten".split()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def counting_rows(n: int = 64) -> list[dict]:
    """A learnable pattern: runs of counting words starting at varying offsets."""
    return [{"text": " ".join(WORDS[(i + k) % 10] for k in range(12))} for i in range(n)]


def qa_rows(n: int = 32) -> list[dict]:
    return [{"question": f"what is {WORDS[i % 9]} plus one", "answer": WORDS[i % 9 + 1]} for i in range(n)]


def sentiment_rows(n: int = 32) -> list[dict]:
    good = ["good movie", "great film", "a really good story", "very great actor"]
    bad = ["bad movie", "terrible film", "a really bad story", "very terrible actor"]
    return [{"review": (good if i % 2 else bad)[i % 4], "label": "positive" if i % 2 else "negative"}
            for i in range(n)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):  # hostkit.testing's fixture, for every module here
    yield


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "count.jsonl", counting_rows())
    write_jsonl(tmp_path / "qa.jsonl", qa_rows())
    write_jsonl(tmp_path / "sentiment.jsonl", sentiment_rows())
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": f"count {w}"},
                                                        {"role": "assistant", "content": w}]} for w in WORDS])
    return tmp_path
