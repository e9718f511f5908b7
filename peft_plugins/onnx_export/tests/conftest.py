"""Fixtures: LoRA adapters made directly with peft (no LoRA pass needed), random non-zero B."""

from __future__ import annotations

from pathlib import Path

import pytest


def _make_adapter(base_dir: Path, out: Path, *, seed: int = 0, **lora_kwargs) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    kwargs = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"], "task_type": "CAUSAL_LM"}
    kwargs.update(lora_kwargs)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(**kwargs))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # peft initialises B to zero: make the adapter matter
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def make_adapter():
    """``make_adapter(base_dir, out, seed=0, **LoraConfig kwargs) -> out``."""
    return _make_adapter


@pytest.fixture(scope="session")
def tiny_adapter(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mixed ranks and alphas (rank_pattern / alpha_pattern), so folding the scaling per module matters."""
    return _make_adapter(tiny_llama, tmp_path_factory.mktemp("adapters") / "tiny-lora",
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
