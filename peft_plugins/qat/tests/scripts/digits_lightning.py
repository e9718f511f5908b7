"""Mode (b) of the QAT tests: a LightningModule and a LightningDataModule for the digits."""

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

DATA = Path(__file__).resolve().parent.parent / "data"


class PTLModule(pl.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return nn.functional.cross_entropy(self.model(images), labels)

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        accuracy = (self.model(images).argmax(-1) == labels).float().mean()
        self.log("accuracy", accuracy)

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=1e-3)


class PTLDataModule(pl.LightningDataModule):
    def _loader(self, name, shuffle):
        with np.load(DATA / f"digits_{name}.npz") as archive:
            dataset = torch.utils.data.TensorDataset(torch.from_numpy(archive["images"]),
                                                     torch.from_numpy(archive["labels"]))
        return torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=shuffle,
                                           generator=torch.Generator().manual_seed(0))

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)


class NotLightning(nn.Module):
    """Wrong type on purpose: ptl_module must give a LightningModule."""

    def __init__(self, model):
        super().__init__()
        self.model = model
