"""Light hardware probes that never import torch (validation runs without it)."""

from __future__ import annotations

import os
from pathlib import Path


def cuda_visible() -> bool:
    """Whether an NVIDIA GPU looks usable, judged from the driver's files only."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) from the variables torchrun and accelerate set."""
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return rank, world
