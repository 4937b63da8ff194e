"""Model factories of the embedded demo (usable as `--arch bastion.demo.models:digits_cnn`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Standardize(nn.Module):
    """(x − mean) / std inside the model, so that attacks work in raw feature units."""

    def __init__(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def digits_cnn(n_classes: int = 10) -> nn.Module:
    """A small CNN for scikit-learn's digits: input (n, 1, 8, 8) in [0, 1], output logits."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, n_classes),
    )


def tabular_mlp(n_features: int = 30, n_classes: int = 2, mean: np.ndarray | None = None,
                std: np.ndarray | None = None, hidden: int = 32) -> nn.Module:
    """An MLP for tabular data with standardisation inside the model (defaults fit breast cancer's 30 features)."""
    mean = np.zeros(n_features) if mean is None else mean
    std = np.ones(n_features) if std is None else std
    return nn.Sequential(Standardize(mean, std), nn.Linear(n_features, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
