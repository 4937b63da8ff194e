"""Shared, cached objects of the poisoning and backdoor tests: digits splits, clean models, one BadNets model.

Functions are cached per process, so every test file reuses the same trained models (pytest fixtures defined in
two modules would train twice).
"""

from __future__ import annotations

from functools import cache

import torch

from bastion.attacks.backdoor.badnets import BadNets
from bastion.core.data import Dataset
from bastion.core.results import Result
from bastion.core.target import TorchTarget
from bastion.core.training import Trainer, seed_everything
from bastion.demo.datasets import digits_with_clean_set
from bastion.demo.models import digits_cnn
from tests.threads import single_thread  # noqa: F401  (re-exported to the test modules)

ARCH = "bastion.demo.models:digits_cnn"
EPOCHS = 20
SHAPE = (1, 8, 8)



@cache
def digits() -> tuple[Dataset, Dataset, Dataset]:
    """(train 1100, defender's clean set 300, test 397): digits in [0, 1], shape (n, 1, 8, 8)."""
    return digits_with_clean_set(0)


def target_of(model: torch.nn.Module) -> TorchTarget:
    return TorchTarget(model, SHAPE, n_classes=10, device="cpu")


@cache
def clean_model(seed: int) -> torch.nn.Module:
    """digits_cnn trained on the clean training set with the same recipe as the poisoning attacks."""
    train, _, _ = digits()
    seed_everything(seed)
    return Trainer(epochs=EPOCHS, seed=seed, device="cpu").fit(digits_cnn(), train.x, train.y)


@cache
def badnets() -> tuple[BadNets, Result, Dataset]:
    """BadNets at 5% poisoning (target class 0): the attack (model in `.artifact_`, data in `.poisoned_`), its
    result, and the triggered test inputs labelled with the target."""
    train, _, test = digits()
    attack = BadNets(arch=ARCH, poison_rate=0.05, target_label=0, epochs=EPOCHS, seed=0)
    result = attack.run(target_of(digits_cnn()), test, train_data=train)
    x, y = attack.triggered(torch.as_tensor(test.x), torch.as_tensor(test.y))
    return attack, result, Dataset(x.numpy(), y.numpy(), "triggered")
