"""Shared data and models of the mitigation tests: scikit-learn's digits (1x8x8 in [0, 1]) and a small MLP."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from bastion.core.data import Dataset
from bastion.core.target import TorchTarget
from bastion.core.training import Trainer


@lru_cache(maxsize=1)
def digits(n_test: int = 300) -> tuple[Dataset, Dataset]:
    """A fixed train/test split of digits scaled to [0, 1], shape (n, 1, 8, 8)."""
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    test, train = order[:n_test], order[n_test:]
    return Dataset(x[train], y[train], "digits-train"), Dataset(x[test], y[test], "digits-test")


def digits_mlp(hidden: int = 128) -> nn.Module:
    """An MLP for 1x8x8 digits (a factory usable as --arch tests.mitigation_fixtures:digits_mlp)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


@lru_cache(maxsize=1)
def trained_mlp() -> nn.Module:
    """The MLP trained normally on the digits training split (shared; defenses work on copies)."""
    train, _ = digits()
    torch.manual_seed(0)
    model = digits_mlp()
    return Trainer(epochs=30, batch_size=64, lr=3e-3, seed=0, device="cpu").fit(model, train.x, train.y)


def mlp_target() -> TorchTarget:
    return TorchTarget(trained_mlp(), (1, 8, 8), n_classes=10, device="cpu", name="digits mlp")
