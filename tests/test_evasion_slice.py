"""The first evasion slice on the demo CNN: PGD breaks it, FGSM never beats PGD, results reproduce."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.evasion.gradient import FGSM, PGD
from bastion.core.errors import AccessError, ParameterError
from bastion.families.evasion import EvasionFamily
from bastion.models import load_target


@pytest.fixture(scope="module")
def demo(digits_demo):
    target = load_target(digits_demo.model_path, device="cpu")
    return target, digits_demo.test.head(200)


def test_pgd_drives_accuracy_under_ten_percent_at_large_eps(demo):
    target, data = demo
    result = PGD(eps=0.3, steps=40).run(target, data)
    assert result.metrics["clean_accuracy"] > 0.9
    assert result.metrics["robust_accuracy"][-1]["robust_accuracy"] < 0.10
    assert result.metrics["constraint_violations"] == 0
    assert EvasionFamily({}, 0).judge([result])[0].severity in ("high", "critical")


def test_fgsm_succeeds_no_more_often_than_pgd_per_sample(demo):
    target, data = demo
    x = torch.as_tensor(data.x)
    y = torch.as_tensor(data.y)
    for eps in (0.05, 0.1, 0.2):
        fgsm_adv = FGSM(eps=eps).perturb(target, x, y, eps)
        pgd_adv = PGD(eps=eps, steps=30).perturb(target, x, y, eps)
        fgsm_fooled = target.labels(fgsm_adv) != y
        pgd_fooled = target.labels(pgd_adv) != y
        assert pgd_fooled.sum() >= fgsm_fooled.sum()
        assert (pgd_adv - x).abs().max() <= eps + 1e-6 and pgd_adv.min() >= 0 and pgd_adv.max() <= 1


@pytest.mark.parametrize("norm,eps", [("l2", 1.0), ("l1", 4.0)])
def test_pgd_respects_other_norms(demo, norm, eps):
    target, data = demo
    result = PGD(eps=eps, norm=norm, steps=20).run(target, data.head(100))
    assert result.metrics["constraint_violations"] == 0
    assert result.metrics["robust_accuracy"][0]["robust_accuracy"] < result.metrics["clean_accuracy"]


def test_robust_accuracy_is_monotone_and_reproducible(demo):
    target, data = demo
    a = PGD(eps="0.02,0.05,0.1", steps=10, seed=3).run(target, data.head(100))
    b = PGD(eps=[0.1, 0.05, 0.02], steps=10, seed=3).run(target, data.head(100))
    curve = [c["robust_accuracy"] for c in a.metrics["robust_accuracy"]]
    assert curve == sorted(curve, reverse=True)
    assert a.metrics["robust_accuracy"] == b.metrics["robust_accuracy"]


def test_refusals(demo):
    target, data = demo
    with pytest.raises(ParameterError):
        PGD(eps=1.5).run(target, data)
    with pytest.raises(ParameterError):
        PGD(steps=0)
    with pytest.raises(AccessError, match="gradients"):
        PGD(eps=0.1).run(target.restrict("labels"), data)


def test_neural_cleanse_does_not_flag_the_clean_demo_cnn(digits_demo):
    """Regression: the clean demo CNN (TorchScript) once crashed Neural Cleanse and once had class 3 flagged."""
    from bastion.defenses.detect.neural_cleanse import NeuralCleanse

    target = load_target(digits_demo.model_path, device="cpu")
    result = NeuralCleanse(steps=150).run(target, digits_demo.test.head(256))
    assert result.metrics["flagged_classes"] == []
