"""The loss plot in the step folder (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def plot_loss(path: Path, train: list[tuple[int, float]], evals: list[tuple[int, float]], *, title: str) -> Path:
    """Write a PNG of the training (and eval) loss against the training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], label="train loss")
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
