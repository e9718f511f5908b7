"""Fixtures: a LoRA adapter made directly with peft (no LoRA pass needed), random non-zero B."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostkit.testing.tiny import make_lora_adapter

NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float32",
       "bnb_4bit_use_double_quant": False}


@pytest.fixture(scope="session")
def tiny_adapter(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_adapter(tiny_llama, tmp_path_factory.mktemp("adapters") / "tiny-lora",
                             rank_pattern={"v_proj": 2}, alpha_pattern={"up_proj": 4})


@pytest.fixture
def nf4() -> dict:
    """BitsAndBytesConfig arguments of a QLoRA-style 4-bit base (float32 compute, so comparisons are tight)."""
    return dict(NF4)


@pytest.fixture
def batch():
    """Two sequences of different lengths (the second right-padded): (input_ids, attention_mask)."""
    import torch

    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 500, (2, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask
