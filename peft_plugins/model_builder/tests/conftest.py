"""Fixtures: LoRA adapters made directly with peft (random non-zero B), prompt token ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostkit.testing.tiny import make_lora_adapter

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="session")
def builder_adapter(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every linear layer, r = 8 with per-module rank and alpha (so the scaling folded into B differs per module)."""
    return make_lora_adapter(tiny_llama, tmp_path_factory.mktemp("adapters") / "all-linear", seed=5, r=8,
                             lora_alpha=16, target_modules=ALL_LINEAR, rank_pattern={"v_proj": 4},
                             alpha_pattern={"down_proj": 4})


@pytest.fixture(scope="session")
def prompt_ids(tiny_llama: Path) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)("the capital of france is")["input_ids"]


@pytest.fixture
def cli():
    """``cli(*argv) -> (exit code, all output)``: run ``hostkit ARGV`` in-process with every installed plugin."""
    import contextlib
    import io

    from hostkit.cli import main

    def run(*argv: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(argv), stream=err)
            except SystemExit as exc:  # argparse
                code = int(exc.code or 0)
        return code, out.getvalue() + err.getvalue()

    return run
