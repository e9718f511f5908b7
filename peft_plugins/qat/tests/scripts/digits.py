"""User script of the QAT tests: models, a training loop, a data loader, a QConfig.

The run files name the functions below; hostkit imports this file only because
they do.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

DATA = Path(__file__).resolve().parent.parent / "data"


class DigitsCNN(nn.Module):
    """A small CNN for 1x8x8 digits: two conv+bn+relu blocks, two linears (~140k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 4 * 4, 256)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


class DigitsMLP(nn.Module):
    """A linear-heavy MLP for the torchao back-end."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                                 nn.Linear(256, 10))

    def forward(self, x):
        return self.net(x)


class ResidualMLP(nn.Module):
    """A skip connection: `h + skip(x)` has no quantized kernel on plain tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, 64)
        self.skip = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.flatten(x)
        return self.fc2(torch.relu(self.fc1(x)) + self.skip(x))


def residual_loader(model_path):
    return ResidualMLP()


def model_loader(model_path):
    return DigitsCNN()


def mlp_loader(model_path):
    return DigitsMLP()


def not_a_module(model_path):
    return "a string"


def _arrays(name):
    with np.load(DATA / f"digits_{name}.npz") as archive:
        return torch.from_numpy(archive["images"]), torch.from_numpy(archive["labels"])


def training_loop_func(model):
    """Mode (a): the user's own loop (SGD with momentum, 3 epochs); returns the last epoch's mean loss."""
    images, labels = _arrays("train")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _epoch in range(3):
        order = torch.randperm(len(images), generator=generator)
        losses = []
        for start in range(0, len(images), 32):
            index = order[start:start + 32]
            loss = nn.functional.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return sum(losses) / len(losses)


def dataloader_func(data_config):
    """type = "user_script" data: a torch DataLoader of (images, labels) batches."""
    images, labels = _arrays(Path(data_config.path).stem.split("_")[-1] if data_config.path else "train")
    dataset = torch.utils.data.TensorDataset(images, labels)
    return torch.utils.data.DataLoader(dataset, batch_size=data_config.batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(data_config.seed))


def empty_loader(data_config):
    return []


def flat_loader(data_config):
    """Batches the CNN cannot take: flat (batch, 64) images."""
    images, labels = _arrays("val")
    return [(images[:32].reshape(32, 64), labels[:32])]


def qconfig_func():
    """Olive's QConfig: full 0..255 activation range, default weight fake-quant."""
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, QConfig, default_weight_fake_quant

    activation = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                        dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=False)
    return QConfig(activation=activation, weight=default_weight_fake_quant)
