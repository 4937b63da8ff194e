"""Trainer: learns, is deterministic for a seed on CPU, and validates its inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from bastion.core.errors import ParameterError
from bastion.core.training import Trainer, accuracy
from bastion.demo.datasets import digits
from bastion.demo.models import digits_cnn


@pytest.fixture(scope="module")
def small_digits():
    train, test = digits()
    return train.subset(slice(0, 400)), test.subset(slice(0, 200))


def _train(seed: int, data) -> torch.nn.Module:
    torch.manual_seed(123)  # the same initial weights; the trainer's seed drives the data order
    model = digits_cnn()
    Trainer(epochs=3, batch_size=32, lr=2e-3, seed=seed, device="cpu").fit(model, data.x, data.y)
    return model


def test_trainer_learns_and_is_deterministic(small_digits):
    train, test = small_digits
    a, b, c = _train(0, train), _train(0, train), _train(1, train)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))
    assert accuracy(a, test.x, test.y) > 0.6


def test_trainer_records_history_and_calls_the_batch_hook(small_digits):
    train, _ = small_digits
    calls = []

    def hook(model, x, y, epoch):
        calls.append(epoch)
        return x, y

    trainer = Trainer(epochs=2, batch_size=100, seed=0, device="cpu", batch_hook=hook)
    trainer.fit(digits_cnn(), train.x, train.y)
    assert calls == [0] * 4 + [1] * 4
    assert len(trainer.history.loss) == 2 and trainer.history.loss[1] < trainer.history.loss[0]


def test_trainer_rejects_bad_parameters():
    with pytest.raises(ParameterError):
        Trainer(lr=0)
    with pytest.raises(ParameterError):
        Trainer(optimizer="lbfgs")
    with pytest.raises(ParameterError):
        Trainer(epochs=1, device="cpu").fit(digits_cnn(), np.zeros((3, 1, 8, 8)), np.zeros(2))


def test_fit_estimator_clones_and_seeds(small_digits):
    train, test = small_digits
    base = LogisticRegression(max_iter=200)
    fitted = Trainer(seed=3).fit_estimator(base, train.x, train.y)
    assert fitted is not base and not hasattr(base, "coef_")
    assert fitted.score(test.x.reshape(len(test), -1), test.y) > 0.8
