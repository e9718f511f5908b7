"""Shared pieces of the hostkit-qat tests: paths, run-file templates, one CPU thread.

Tests get them through the ``qat`` fixture (the suite runs with
``--import-mode=importlib``, so test modules cannot import this file).
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SCRIPTS = HERE / "scripts"
DIGITS = SCRIPTS / "digits.py"
DIGITS_LIGHTNING = SCRIPTS / "digits_lightning.py"

#: [model] + [data.*] for the CNN; tests append their [[passes]] table.
CNN_HEADER = f"""
[model]
type = "PyTorchModel"
user_script = "{DIGITS}"
model_loader = "model_loader"

[data.train]
type = "npz"
path = "{DATA / 'digits_train.npz'}"
input_field = "images"
label_field = "labels"
batch_size = 32

[data.val]
type = "npz"
path = "{DATA / 'digits_val.npz'}"
input_field = "images"
label_field = "labels"
batch_size = 128

[output]
dir = "out"
"""

EAGER_FUSE = '[["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["fc1", "relu3"]]'


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The machines running the suite are shared: keep torch to one thread."""
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def qat():
    """Paths and run-file pieces: ``qat.cnn_run(pass_table)`` gives a whole run file."""

    def cnn_run(passes: str, header: str = CNN_HEADER) -> str:
        return header + "\n[[passes]]\ntype = \"QuantizationAwareTraining\"\n" + passes

    return types.SimpleNamespace(data=DATA, scripts=SCRIPTS, digits=DIGITS, digits_lightning=DIGITS_LIGHTNING,
                                 header=CNN_HEADER, fuse=EAGER_FUSE, cnn_run=cnn_run)
