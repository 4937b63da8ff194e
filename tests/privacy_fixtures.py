"""Shared, cached models and data for the privacy tests (digits; trained once per session)."""

from __future__ import annotations

from functools import cache

import numpy as np
from sklearn.datasets import load_digits
from torch import nn

from bastion.attacks.privacy.dp_training import TrainingProcedure
from bastion.core.data import Dataset
from bastion.core.registry import get
from bastion.core.target import TorchTarget
from bastion.core.training import Trainer, seed_everything
from tests.threads import single_thread  # noqa: F401  (re-exported to the test modules)

N_MEMBERS = 300
EPOCHS = 100
TRAINING = {"epochs": EPOCHS, "batch_size": 32}


def mlp() -> nn.Module:
    """The target architecture: an over-parameterised MLP for 8x8 digits."""
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


@cache
def digits_split() -> tuple[Dataset, Dataset, Dataset]:
    """(members, non-members, population) of scikit-learn's digits, in [0, 1]."""
    d = load_digits()
    x, y = (d.data / 16).astype(np.float32), d.target
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    m = N_MEMBERS
    return (Dataset(x[:m], y[:m], "members"), Dataset(x[m:2 * m], y[m:2 * m], "nonmembers"),
            Dataset(x[2 * m:], y[2 * m:], "population"))


def _target(model: nn.Module) -> TorchTarget:
    return TorchTarget(model, (64,), device="cpu")


@cache
def overfit_model() -> nn.Module:
    members, _, _ = digits_split()
    seed_everything(123)
    with single_thread():
        return Trainer(**TRAINING, seed=123, device="cpu").fit(mlp(), members.x, members.y)


def overfit_target() -> TorchTarget:
    return _target(overfit_model())


@cache
def null_model() -> nn.Module:
    """Same recipe, trained on population records only: the 'members' are not members at all."""
    _, _, population = digits_split()
    seed_everything(7)
    with single_thread():
        return Trainer(**TRAINING, seed=7, device="cpu").fit(mlp(), population.x[:N_MEMBERS],
                                                             population.y[:N_MEMBERS])


@cache
def dp_model() -> nn.Module:
    """DP-SGD (noise multiplier 2, clipping 1) on the members."""
    members, _, _ = digits_split()
    procedure = TrainingProcedure(mlp, Trainer(epochs=30, batch_size=64, lr=0.05, optimizer="sgd", device="cpu"),
                                  noise_multiplier=2.0, max_grad_norm=1.0)
    with single_thread():
        return procedure(members.x, members.y, 5)


@cache
def attack(name: str, model: str = "overfit", **params):
    """Run a registered inference attack once per (name, model, params) and cache the result."""
    members, nonmembers, population = digits_split()
    target = _target({"overfit": overfit_model, "null": null_model, "dp": dp_model}[model]())
    instance = get("attacks", name, "privacy")(**params)
    with single_thread():
        result = instance.run(target, members=members, nonmembers=nonmembers, population=population)
    return result, instance


def tpr(result, fpr: float) -> tuple[float, list[float]]:
    row = next(r for r in result.metrics["tpr_at_fpr"] if abs(r["fpr"] - fpr) < 1e-12)
    return row["tpr"], row["ci"]

