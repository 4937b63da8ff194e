"""Training procedures to audit: plain training through the shared Trainer, or DP-SGD (Abadi et al., 2016)
through the mitigations' `dp-sgd` defense (Opacus: Poisson sampling, per-sample clipping, Gaussian noise, RDP
accounting). A procedure is called as `procedure(x, y, seed) -> model` and remembers the epsilon its accountant
reported for the last run, which is the claim a DP audit checks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from torch import nn

from bastion.core import registry
from bastion.core.data import Dataset
from bastion.core.target import TorchTarget
from bastion.core.training import Trainer, TrainHistory, seed_everything


@dataclasses.dataclass
class TrainingProcedure:
    """`factory` trained with `trainer`'s settings; with DP-SGD when `noise_multiplier` is set."""

    factory: Callable[[], nn.Module]
    trainer: Trainer
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    epsilon: float | None = None  # reported by the accountant after a DP-SGD run

    def __call__(self, x: np.ndarray, y: np.ndarray, seed: int) -> nn.Module:
        seed_everything(seed)
        model = self.factory()
        if self.noise_multiplier is None:
            run = dataclasses.replace(self.trainer, seed=seed, history=TrainHistory())
            return run.fit(model, x, y)
        t = self.trainer
        dp = registry.get("defenses", "dp-sgd", "training")(
            noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm, delta=self.delta,
            epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, optimizer=t.optimizer, eval_eps=None, seed=seed)
        target = TorchTarget(model, np.shape(x)[1:], device=t.device)
        model, metrics = dp.train(model, Dataset(x, y), target)
        self.epsilon = float(metrics["epsilon"])
        return model.eval()
