"""The README's run file validates, and it starts with exactly the two commands."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_commands():
    first_block = re.search(r"```sh\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert README.index("```sh") < README.index("hostkit is a minimal host")


def test_readme_run_file_validates(run_toml, tmp_path):
    text = re.search(r"```toml\n(.*?)```", README, re.S).group(1)
    shutil.copytree(ROOT / "examples" / "models" / "tiny-llama", tmp_path / "models" / "tiny-llama")
    (tmp_path / "data").mkdir()
    shutil.copy(ROOT / "examples" / "data" / "tiny_train.jsonl", tmp_path / "data" / "train.jsonl")
    result = run_toml(text, command="validate")
    assert result.exit_code == 0, result.output
    assert "3 steps: LoRA, MergeAdapterWeights, OnnxConversion" in result.output
