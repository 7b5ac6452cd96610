"""A small stand-in model and dataset for the trainer tests: these test the training machinery,
not a model. ``config``/``run``/``rows`` are the short forms the tests use."""
from __future__ import annotations

import csv
import os

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from sdpsfnet.models.registry import MODELS, register_model
from sdpsfnet.training import TrainConfig, train


class Standin(nn.Module):
    """Two emitted images from two 3x3 conv layers (receptive radius 2 per pass)."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.a = nn.Conv2d(3, width, 3, padding=1)
        self.b = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        y1 = x + 0.1 * self.b(torch.relu(self.a(x)))
        return [y1, y1 + 0.1 * self.b(torch.relu(self.a(y1)))]


if "_standin" not in MODELS:
    register_model("_standin")(lambda **kw: Standin(**kw))


class Pairs(Dataset):
    """Random clean images plus rain-like noise; random crops drawn from torch's global RNG, as the
    real datasets do (so a resume that does not restore the RNG gives different batches)."""

    def __init__(self, n: int = 5, size: int = 20, crop: int = 12, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.clean = torch.rand(n, 3, size, size, generator=g)
        self.rainy = (self.clean + 0.3 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)
        self.crop = crop

    def __len__(self):
        return len(self.clean)

    def __getitem__(self, i):
        c, s = self.crop, self.clean.shape[-1]
        t, l = torch.randint(0, s - c + 1, (2,)).tolist()
        return self.rainy[i, :, t:t + c, l:l + c], self.clean[i, :, t:t + c, l:l + c], str(i)


def config(out, **kw) -> TrainConfig:
    """12 steps of batch 2 over 5 items (2 steps per epoch), validation and checkpoint every 4."""
    base = dict(model="_standin", out=str(out), batch_size=2, steps=12, epochs=None, warmup_epochs=1,
                val_every=4, ckpt_every=4, progress=False, seed=3)
    return TrainConfig(**{**base, **kw})


def val_pairs() -> Pairs:
    """The validation set: two whole 16x16 images."""
    return Pairs(2, 16, 16, seed=2)


def run(cfg, resume=None, criterion=None, **kw):
    return train(cfg, resume=resume, train_set=Pairs(), val_set=val_pairs(), criterion=criterion, **kw)


def rows(out) -> list[dict]:
    with open(os.path.join(out, "metrics.csv")) as f:
        return list(csv.DictReader(f))
