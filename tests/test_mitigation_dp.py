"""DP-SGD through Opacus: ε from the accountant, target-ε mode, BatchNorm handling, membership leakage falls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn

from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.target import TorchTarget
from bastion.core.training import Trainer
from bastion.defenses.training.dp_sgd import DPSGD, private_layers
from bastion.families import judged
from bastion.models import load_target
from bastion.models.export import save_model
from bastion.models.metadata import ModelMetadata

from .mitigation_fixtures import digits, mlp_target


def _expected_epsilon(sigma: float, rate: float, steps: int, delta: float) -> float:
    accountant = RDPAccountant()
    accountant.history = [(sigma, rate, steps)]
    return accountant.get_epsilon(delta)


def test_epsilon_agrees_with_the_opacus_accountant():
    train, test = digits()
    data = train.head(512)
    defense = DPSGD(noise_multiplier=1.1, epochs=2, batch_size=64, delta=1e-5, eval_eps=None)
    m = defense.run(mlp_target(), test.head(100), train_data=data).metrics
    assert m["steps"] == 2 * 8 and m["sample_rate"] == pytest.approx(1 / 8)
    assert m["epsilon"] == pytest.approx(_expected_epsilon(1.1, 1 / 8, 16, 1e-5), rel=1e-9)
    assert m["delta"] == 1e-5 and m["noise_multiplier"] == 1.1
    assert m["membership"]["before"]["auc"] is not None and "tpr_at_1pct_fpr_change" in m["membership"]


def test_target_epsilon_mode_stays_within_the_target():
    train, test = digits()
    defense = DPSGD(target_epsilon=3.0, epochs=2, batch_size=64, eval_eps=None)
    m = defense.run(mlp_target(), test.head(100), train_data=train.head(512)).metrics
    assert 2.9 <= m["epsilon"] <= 3.0
    assert m["epsilon"] == pytest.approx(_expected_epsilon(m["noise_multiplier"], m["sample_rate"], m["steps"],
                                                           1e-5), rel=1e-9)
    with pytest.raises(ParameterError, match="either"):
        DPSGD(noise_multiplier=1.0, target_epsilon=1.0)


def test_batchnorm_is_replaced_with_a_clear_message():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    train, test = digits()
    target = TorchTarget(model, (1, 8, 8), device="cpu")
    defense = DPSGD(noise_multiplier=1.0, epochs=1, eval_eps=None)
    result = defense.run(target, test.head(100), train_data=train.head(256))
    assert result.metrics["layers_replaced"] == ["2 (BatchNorm1d)"]
    assert any("GroupNorm" in f.title for f in judged(result).findings)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in defense.artifact_.modules())
    assert any(isinstance(m, nn.BatchNorm1d) for m in target.model.modules())  # the original is untouched
    with pytest.raises(ParameterError, match="eager PyTorch"):
        private_layers(torch.jit.trace(nn.Linear(3, 2), torch.zeros(1, 3)))


def test_dp_sgd_refuses_a_torchscript_model_before_any_work(tmp_path):
    train, test = digits()
    path = save_model(mlp_target().model, tmp_path / "mlp.pt", ModelMetadata(n_classes=10, input_shape=[1, 8, 8]))
    with pytest.raises(ParameterError, match="--arch"):
        DPSGD(epochs=1).run(load_target(path, device="cpu"), test.head(20), train_data=train.head(64))


def test_membership_tpr_at_low_fpr_falls_after_dp_sgd():
    # random labels: a non-private model can only memorise them, so membership inference is strong
    rng = np.random.default_rng(0)
    x = rng.random((400, 32)).astype(np.float32)
    y = rng.integers(0, 10, 400)
    members, nonmembers = Dataset(x[:200], y[:200], "members"), Dataset(x[200:], y[200:], "nonmembers")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 10))
    Trainer(epochs=100, batch_size=32, lr=3e-3, device="cpu").fit(model, members.x, members.y)
    target = TorchTarget(model, (32,), device="cpu")
    m = DPSGD(noise_multiplier=1.0, epochs=10, batch_size=32, eval_eps=None).run(
        target, nonmembers, train_data=members).metrics
    before, after = m["membership"]["before"], m["membership"]["after"]
    assert before["tpr_at_1pct_fpr"] >= 0.3 and before["auc"] >= 0.9
    assert after["tpr_at_1pct_fpr"] <= before["tpr_at_1pct_fpr"] / 3
    assert m["membership"]["tpr_at_1pct_fpr_change"] < -0.2
    assert m["epsilon"] < 20
