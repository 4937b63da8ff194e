"""DP audit: a valid lower bound on epsilon, tight enough to catch a false DP claim; the log-log ROC plot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bastion.attacks.privacy.dp_audit import DPAudit, epsilon_lower_bound, p_value
from bastion.attacks.privacy.dp_training import TrainingProcedure
from bastion.core.errors import ParameterError
from bastion.core.training import Trainer
from bastion.evaluation.metrics import roc_curve
from bastion.evaluation.privacy_plot import curves_from_results, curves_from_scores, roc_loglog_png
from bastion.families import judged
from tests.privacy_fixtures import attack, digits_split, mlp, single_thread


def test_epsilon_bound_matches_the_closed_form():
    # delta = 0 and r of r guesses right: the bound solves sigmoid(eps)^r = significance
    r, significance = 100, 0.05
    expected = math.log(significance ** (1 / r) / (1 - significance ** (1 / r)))
    assert epsilon_lower_bound(200, r, r, 0.0, significance) == pytest.approx(expected, abs=1e-6)
    assert epsilon_lower_bound(200, r, 50) == 0.0  # a coin flip proves nothing
    assert epsilon_lower_bound(200, r, 90) < epsilon_lower_bound(200, r, 99)
    assert epsilon_lower_bound(200, r, 95, delta=1e-3) < epsilon_lower_bound(200, r, 95, delta=0.0)


def test_p_value_is_a_valid_tail_for_a_dp_mechanism():
    """Randomised response is exactly eps-DP: its correct-guess count never beats the bound's tail."""
    eps, r, m = 1.0, 200, 200
    rng = np.random.default_rng(0)
    correct = rng.binomial(r, math.exp(eps) / (1 + math.exp(eps)), size=2000)
    rejected = np.mean([p_value(m, r, int(c), eps, 0.0) <= 0.05 for c in correct])
    assert rejected <= 0.06


def _audit(noise: float | None, epochs: int, claimed: float | None):
    members, _, population = digits_split()
    lr, opt = (0.05, "sgd") if noise else (1e-3, "adam")
    train = TrainingProcedure(mlp, Trainer(epochs=epochs, batch_size=64, lr=lr, optimizer=opt, device="cpu"),
                              noise_multiplier=noise, max_grad_norm=1.0)
    with single_thread():
        return DPAudit(n_canaries=200, seed=0).run(train, members, population, claimed_epsilon=claimed)


def test_audit_catches_a_false_dp_claim():
    result = _audit(noise=None, epochs=100, claimed=0.5)  # trained without noise, but claimed eps = 0.5
    assert result.metrics["epsilon_lower_bound"] > 1.0
    assert judged(result).findings[0].severity == "critical"
    assert result.metrics["n_included"] > 70


def test_audit_of_real_dp_sgd_respects_its_guarantee():
    result = _audit(noise=2.0, epochs=30, claimed=None)  # the claim is the accountant's epsilon
    claimed = result.metrics["claimed_epsilon"]
    assert claimed is not None and 0 < claimed < 50
    assert result.metrics["epsilon_lower_bound"] <= claimed
    assert result.metrics["epsilon_lower_bound"] < 1.0
    assert judged(result).findings[0].severity == "info"


def test_audit_parameters():
    with pytest.raises(ParameterError):
        DPAudit(delta=2.0)
    with pytest.raises(ParameterError):
        DPAudit(n_canaries=5, guesses=[10]).audit(np.zeros(5), np.zeros(5, bool))


def test_loglog_roc_plot(tmp_path):
    rng = np.random.default_rng(0)
    curves = curves_from_scores({"strong": (rng.normal(2, 1, 500), rng.normal(0, 1, 500)),
                                 "chance": (rng.normal(0, 1, 500), rng.normal(0, 1, 500))})
    png = roc_loglog_png(curves, tmp_path / "roc.png")
    assert png.startswith(b"\x89PNG") and (tmp_path / "roc.png").read_bytes() == png
    fpr, tpr = roc_curve([1.0, 1.0], [0.0, 0.0])  # curves with zero rates still plot on log axes
    assert roc_loglog_png({"perfect": (fpr, tpr)}).startswith(b"\x89PNG")


def test_results_carry_a_small_roc_for_reports():
    result, _ = attack("loss")
    roc = result.metrics["roc"]
    assert len(roc["fpr"]) <= 61 and roc["fpr"][0] == 0.0 and roc["fpr"][-1] == pytest.approx(1.0)
    assert np.all(np.diff(roc["tpr"]) >= 0) and roc["tpr"][-1] == 1.0
    one_pct = max(t for f, t in zip(roc["fpr"], roc["tpr"], strict=True) if f <= 0.01)
    assert one_pct <= result.metrics["tpr_at_fpr"][-1]["tpr"]
    curves = curves_from_results({"loss": result.to_dict()})
    assert roc_loglog_png(curves).startswith(b"\x89PNG")
