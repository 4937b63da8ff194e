"""Substitute models for learning-based extraction: the default factory, `--arch` factories, and training.

The default substitute is chosen from the input shape: a small CNN for images (C, H, W), an MLP otherwise. It
standardises its inputs with statistics of the attacker's own data (the pool), which the attacker knows.
Training goes through `bastion.core.training.Trainer`, with a soft cross-entropy when the API returns scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from bastion.core.errors import ParameterError
from bastion.core.training import Trainer
from bastion.models.factory import build
from bastion.models.layers import Standardize


def default_substitute(input_shape: Sequence[int], n_classes: int, reference: torch.Tensor | None = None,
                       hidden: int = 128) -> nn.Module:
    """A CNN for (C, H, W) inputs with H, W >= 4, an MLP otherwise; `reference` inputs set the standardisation."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3 and min(shape[1:]) >= 4:
        channels = shape[0]
        if reference is not None and len(reference):
            ref = reference.float().transpose(0, 1).reshape(channels, -1)
            mean, std = ref.mean(dim=1).view(channels, 1, 1), ref.std(dim=1).view(channels, 1, 1)
        else:
            mean, std = torch.zeros(channels, 1, 1), torch.ones(channels, 1, 1)
        pool_twice = min(shape[1:]) >= 16
        return nn.Sequential(
            Standardize(mean, std.clamp_min(1e-3)),
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2) if pool_twice else nn.Identity(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, hidden), nn.ReLU(), nn.Linear(hidden, n_classes),
        )
    features = int(np.prod(shape))
    if reference is not None and len(reference) > 1:
        flat = reference.float().reshape(len(reference), -1)
        mean, std = flat.mean(dim=0), flat.std(dim=0)
    else:
        mean, std = torch.zeros(features), torch.ones(features)
    return nn.Sequential(nn.Flatten(), Standardize(mean, std.clamp_min(1e-3)), nn.Linear(features, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


def substitute_factory(arch: str | Callable[[], nn.Module] | None, input_shape: Sequence[int], n_classes: int,
                       reference: torch.Tensor | None) -> Callable[[], nn.Module]:
    """A zero-argument factory of fresh substitutes: `arch` (module:factory) if given, else the default."""
    if arch is None:
        ref = None if reference is None else reference.detach().cpu()
        return lambda: default_substitute(input_shape, n_classes, ref)

    def make() -> nn.Module:
        model = build(arch)
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *input_shape))
        if tuple(out.shape) != (2, n_classes):
            raise ParameterError(f"--arch {arch}: the substitute outputs shape {tuple(out.shape[1:])} for inputs of "
                                 f"shape {tuple(input_shape)}; the victim has {n_classes} classes")
        return model

    return make


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against probability vectors (rows renormalised, so rounded or top-k scores work too)."""
    targets = targets.clamp_min(0)
    targets = targets / targets.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return -(targets * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def make_trainer(epochs: int, batch_size: int, lr: float, min_steps: int, n: int, seed: int, device: torch.device,
                 soft: bool) -> Trainer:
    """A Trainer with at least `min_steps` optimiser steps, so that small query budgets still train."""
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    return Trainer(epochs=max(epochs, math.ceil(min_steps / steps_per_epoch)), batch_size=batch_size, lr=lr,
                   seed=seed, device=str(device), description="training substitute",
                   loss_fn=soft_cross_entropy if soft else nn.CrossEntropyLoss())


def as_targets(answers: torch.Tensor, soft: bool) -> torch.Tensor:
    """Training targets from API answers: probability rows when soft, else labels."""
    if soft:
        return answers.float()
    return answers.argmax(dim=-1) if answers.dim() == 2 else answers.long()
