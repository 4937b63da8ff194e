"""Model factories of the embedded demo (usable as `--arch bastion.demo.models:digits_cnn`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bastion.models.layers import Standardize


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


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut (He et al., CVPR 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(x)).relu()
        return (self.bn2(self.conv2(out)) + self.shortcut(x)).relu()


def resnet18_cifar(n_classes: int = 10) -> nn.Module:
    """ResNet-18 for 3x32x32 inputs in [0, 1] (the CIFAR variant: a 3x3 stem, no max-pool), 11.2M parameters."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    c_in = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, n_classes)]
    return nn.Sequential(*layers)
