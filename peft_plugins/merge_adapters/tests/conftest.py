"""Fixtures: a LoRA adapter made directly with peft (no LoRA pass needed), random non-zero B."""

from __future__ import annotations

from pathlib import Path

import pytest

NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float32",
       "bnb_4bit_use_double_quant": False}


def make_adapter(base_dir: Path, out: Path, *, seed: int = 0, **lora_kwargs) -> Path:
    """Save a peft LoRA adapter for ``base_dir`` in ``out``, with lora_B ~ N(0, 0.05) (peft's init is zero)."""
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
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_adapter(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_llama, tmp_path_factory.mktemp("adapters") / "tiny-lora",
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
