"""Regenerate digits_train.npz / digits_val.npz from scikit-learn's 8x8 digits.

    python peft_plugins/qat/tests/data/make_digits.py

scikit-learn ships the 1,797 images (UCI optical recognition of handwritten
digits); pixel values 0..16 are scaled to 0..1 and shaped (N, 1, 8, 8).
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

HERE = Path(__file__).parent
TRAIN = 1400


def main() -> None:
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], labels[order]
    np.savez_compressed(HERE / "digits_train.npz", images=images[:TRAIN], labels=labels[:TRAIN])
    np.savez_compressed(HERE / "digits_val.npz", images=images[TRAIN:], labels=labels[TRAIN:])


if __name__ == "__main__":
    main()
