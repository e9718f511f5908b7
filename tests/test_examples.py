"""Every example run file validates, and the tiny-model examples run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.toml")) + sorted((ROOT / "peft_plugins").glob("*/examples/*.toml"))
TINY = ["lora.toml", "classification.toml", "qlora.toml", "loftq.toml", "merge.toml", "onnx_adapters.toml"]


def hostkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hostkit", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_validates(path, tmp_path):
    result = hostkit("validate", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_tiny_example_runs(name, tmp_path):
    result = hostkit("run", str(ROOT / "examples" / name), "--output-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "ok"
    assert all(step["status"] == "ok" for step in manifest["steps"])
