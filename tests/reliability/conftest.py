"""Fixtures of the reliability suite (issue 12); the helpers live in ``reliability.support``."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.support import WORDS, build_toy_graph, toy_adapter


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with a fake model ``m/`` (Echo copies nothing from it; the host fingerprints it)."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    return tmp_path


@pytest.fixture
def count_data(tmp_path: Path) -> Path:
    import json

    path = tmp_path / "count.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(WORDS[(i + k) % 10] for k in range(12))}) + "\n"
                            for i in range(64)))
    return path


@pytest.fixture
def extracted_toy(tmp_path: Path) -> tuple[Path, Path]:
    """(model.onnx, adapter_weights.npz) of the toy graph after ExtractAdapters (make_inputs = true)."""
    from hostkit_extract_adapters.extract import extract_adapters

    src = build_toy_graph(tmp_path / "src" / "model.onnx", toy_adapter())
    result = extract_adapters(src, tmp_path / "extracted", save_format="numpy")
    return Path(result.model_path), Path(result.weights_path)
