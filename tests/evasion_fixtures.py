"""Shared fixtures of the evasion tests: small models trained on scikit-learn's digits (1x8x8 in [0, 1])."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from bastion.core.data import Dataset
from bastion.core.training import Trainer


def digits_split(n_test: int = 300, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Digits scaled to [0, 1], shape (n, 1, 8, 8); a fixed train/test split."""
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = order[:n_test], order[n_test:]
    return Dataset(x[train], y[train], "digits-train"), Dataset(x[test], y[test], "digits-test")


def digits_cnn() -> nn.Module:
    """A small CNN for 1x8x8 digits: two convolutions, one hidden layer, 10 logits."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def train_digits_cnn(train: Dataset, epochs: int = 15, seed: int = 0, batch_hook=None) -> nn.Module:
    torch.manual_seed(seed)
    model = digits_cnn()
    Trainer(epochs=epochs, batch_size=64, lr=3e-3, seed=seed, device="cpu", batch_hook=batch_hook).fit(
        model, train.x, train.y)
    return model.eval()


def pgd_training_hook(eps: float, steps: int = 5, seed: int = 0):
    """A Trainer batch hook that replaces each batch by its PGD adversarial version (Madry et al., 2018)."""
    from bastion.attacks.evasion.gradient import PGD
    from bastion.core.target import TorchTarget

    attack = PGD(eps=eps, steps=steps, seed=seed)

    def hook(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, epoch: int):
        model.eval()
        target = TorchTarget(model, xb.shape[1:], n_classes=10, device=xb.device)
        with torch.enable_grad():
            adv = attack.perturb(target, xb, yb, eps)
        return adv.detach(), yb

    return hook
