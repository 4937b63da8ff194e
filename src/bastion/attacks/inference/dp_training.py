"""DP-SGD through the shared Trainer (Abadi et al., 2016, "Deep Learning with Differential Privacy", CCS), with
Opacus' per-sample gradients and DPOptimizer (clip each example's gradient to `max_grad_norm`, add Gaussian noise
of std `noise_multiplier * max_grad_norm`). Used by the DP audit and to check that a private model does not leak.

The Trainer draws shuffled fixed-size batches; the epsilon reported here uses the RDP accountant with sampling
rate batch_size / n, the usual (Poisson-sampling) approximation for shuffled batches.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from bastion.core.errors import ParameterError
from bastion.core.training import Trainer, TrainHistory, seed_everything


def dp_epsilon(noise_multiplier: float, batch_size: int, n: int, epochs: int, delta: float) -> float:
    """The (epsilon, delta) of DP-SGD from the RDP accountant."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    steps = epochs * math.ceil(n / batch_size)
    accountant.history = [(noise_multiplier, min(1.0, batch_size / n), steps)]
    return float(accountant.get_epsilon(delta))


def dp_fit(trainer: Trainer, model: nn.Module, x: np.ndarray, y: np.ndarray, noise_multiplier: float,
           max_grad_norm: float) -> nn.Module:
    """Train `model` with DP-SGD through `trainer`; return the plain module in eval mode."""
    try:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer
    except ImportError:  # pragma: no cover - opacus is a dependency
        raise ParameterError("DP-SGD needs opacus: pip install opacus") from None
    if noise_multiplier < 0 or max_grad_norm <= 0:
        raise ParameterError("noise_multiplier must be >= 0 and max_grad_norm > 0")
    wrapped = GradSampleModule(model)
    optimizer = DPOptimizer(trainer.make_optimizer(wrapped), noise_multiplier=noise_multiplier,
                            max_grad_norm=max_grad_norm, expected_batch_size=trainer.batch_size,
                            generator=torch.Generator().manual_seed(trainer.seed))
    with warnings.catch_warnings():  # Opacus' hooks fire on the first layer, whose input needs no gradient
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        trainer.fit(wrapped, x, y, optimizer=optimizer)
    return wrapped._module.eval()


def training_procedure(factory: Callable[[], nn.Module], trainer: Trainer, noise_multiplier: float | None = None,
                       max_grad_norm: float = 1.0) -> Callable[[np.ndarray, np.ndarray, int], nn.Module]:
    """A training procedure `train(x, y, seed) -> model`: plain training, or DP-SGD when noise is given."""

    def train(x: np.ndarray, y: np.ndarray, seed: int) -> nn.Module:
        seed_everything(seed)
        model = factory()
        run = dataclasses.replace(trainer, seed=seed, history=TrainHistory())
        if noise_multiplier is None:
            return run.fit(model, x, y)
        return dp_fit(run, model, x, y, noise_multiplier, max_grad_norm)

    return train
