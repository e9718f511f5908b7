"""Fixtures: LoRA adapters made directly with peft (no LoRA pass needed), random non-zero B."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostkit.testing.tiny import make_lora_adapter


@pytest.fixture(scope="session")
def tiny_adapter(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mixed ranks and alphas (rank_pattern / alpha_pattern), so folding the scaling per module matters."""
    return make_lora_adapter(tiny_llama, tmp_path_factory.mktemp("adapters") / "tiny-lora",
                             rank_pattern={"v_proj": 2}, alpha_pattern={"up_proj": 4})


@pytest.fixture
def padded_batch():
    """Batch 2, the second sequence 3 tokens shorter (right padding): (input_ids, attention_mask, position_ids)."""
    import torch

    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 500, (2, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions
