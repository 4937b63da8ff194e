"""Every evasion attack breaks an undefended model, stays inside its norm bound and the input bounds, and
reproduces for a seed; minimum-norm attacks report their median perturbation consistently with their curve."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.evasion.base import EvasionAttack, MinNormAttack
from bastion.attacks.evasion.norms import lp_norm
from bastion.core import registry
from bastion.families.evasion import EvasionFamily
from tests.evasion_fixtures import eval_data, surrogate, target

# name, norm, eps, extra parameters (budgets kept small: the tests must stay fast)
CASES = [
    ("fgsm", "linf", 0.2, {}),
    ("pgd", "linf", 0.2, {"steps": 10}),
    ("pgd", "l2", 1.5, {"steps": 10}),
    ("pgd", "l1", 6.0, {"steps": 10}),
    ("apgd-ce", "linf", 0.2, {"steps": 20}),
    ("apgd-ce", "l2", 1.5, {"steps": 20}),
    ("apgd-dlr", "linf", 0.2, {"steps": 20}),
    ("apgd-t", "linf", 0.2, {"steps": 10, "n_targets": 2}),
    ("fab", "linf", 0.2, {"steps": 20}),
    ("fab-t", "l2", 1.5, {"steps": 20, "n_targets": 2}),
    ("fab", "l1", 6.0, {"steps": 20}),
    ("cw", "l2", 1.5, {"steps": 30, "binary_steps": 4}),
    ("deepfool", "l2", 1.5, {}),
    ("deepfool", "linf", 0.2, {}),
    ("square", "linf", 0.2, {"queries": 300}),
    ("square", "l2", 1.5, {"queries": 300}),
    ("hopskipjump", "l2", 1.5, {"steps": 8, "init_evals": 30}),
    ("hopskipjump", "linf", 0.2, {"steps": 8, "init_evals": 30}),
    ("transfer", "linf", 0.2, {"steps": 20}),
    ("eot", "linf", 0.2, {"samples": 2, "steps": 10}),
    ("bpda", "linf", 0.2, {"steps": 10}),
]


def build(name: str, norm: str, eps, params: dict, seed: int = 0) -> EvasionAttack:
    cls = registry.get("attacks", name, "evasion")
    extra = {"surrogate": surrogate()} if name == "transfer" else {}
    return cls(eps=eps, norm=norm, seed=seed, **params, **extra)


@pytest.mark.parametrize("name,norm,eps,params", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_attack_breaks_undefended_model_within_bounds(name, norm, eps, params):
    data = eval_data(40)
    result = build(name, norm, eps, params).run(target(), data)
    clean = result.metrics["clean_accuracy"]
    robust = result.metrics["robust_accuracy"][0]["robust_accuracy"]
    assert clean > 0.9
    assert robust <= 0.5 * clean, f"{name} left {robust:.0%} of the samples robust"
    assert result.metrics["constraint_violations"] == 0
    assert result.queries > 0 and result.seconds > 0 and result.device == "cpu"
    assert not [f for f in result.findings if f.metric == "robust_accuracy"]  # attacks measure, families judge
    judged = EvasionFamily({}, 0).judge([result])
    assert judged and judged[0].metric == "robust_accuracy"


@pytest.mark.parametrize("name,norm,eps,params", [c for c in CASES if c[0] not in ("transfer", "eot", "bpda")],
                         ids=[f"{c[0]}-{c[1]}" for c in CASES if c[0] not in ("transfer", "eot", "bpda")])
def test_perturb_respects_norm_and_input_bounds(name, norm, eps, params):
    data = eval_data(20)
    x, y = torch.as_tensor(data.x), torch.as_tensor(data.y)
    attack = build(name, norm, eps, params)
    adv = attack.perturb(target(), x, y, torch.full((len(x),), eps))
    assert adv.shape == x.shape and torch.isfinite(adv).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert (lp_norm(adv - x, norm) <= eps * (1 + 1e-5) + 1e-6).all()


@pytest.mark.parametrize("name", ["pgd", "apgd-t", "square", "fab-t", "hopskipjump"])
def test_reproducible_for_a_seed(name):
    params = {"pgd": {"steps": 5}, "apgd-t": {"steps": 5, "n_targets": 2}, "square": {"queries": 100},
              "fab-t": {"steps": 5, "n_targets": 1}, "hopskipjump": {"steps": 3, "init_evals": 20}}[name]
    norm, eps = ("l2", [0.5, 1.0]) if name == "hopskipjump" else ("linf", [0.05, 0.1])
    data = eval_data(30)
    a = build(name, norm, eps, params, seed=4).run(target(), data)
    b = build(name, norm, eps, params, seed=4).run(target(), data)
    assert a.metrics["robust_accuracy"] == b.metrics["robust_accuracy"]
    assert a.queries == b.queries


@pytest.mark.parametrize("name,norm", [("fab", "l2"), ("deepfool", "l2"), ("cw", "l2"), ("hopskipjump", "l2")])
def test_minimum_norm_curve_follows_from_minimal_perturbations(name, norm):
    data = eval_data(40)
    eps = [0.25, 0.5, 1.0, 2.0]
    params = {"fab": {"steps": 20}, "deepfool": {}, "cw": {"steps": 30, "binary_steps": 4},
              "hopskipjump": {"steps": 8, "init_evals": 30}}[name]
    attack = build(name, norm, eps, params)
    assert isinstance(attack, MinNormAttack)
    tg = target()
    result = attack.run(tg, data)
    median = result.metrics["median_perturbation"]
    assert 0 < median < 3.0
    # re-derive the curve: the minimal examples, re-judged on the model, within each eps
    x, y = torch.as_tensor(data.x), torch.as_tensor(data.y)
    correct = tg.labels(x) == y
    adv = attack.minimize(tg, x[correct], y[correct])
    fooled = tg.labels(adv) != y[correct]
    dist = torch.where(fooled, lp_norm(adv - x[correct], norm), torch.tensor(float("inf")))
    for point in result.metrics["robust_accuracy"]:
        expected = float((dist > point["eps"]).sum()) / len(x)
        assert point["robust_accuracy"] == pytest.approx(expected, abs=1e-6)
    curve = [c["robust_accuracy"] for c in result.metrics["robust_accuracy"]]
    assert curve == sorted(curve, reverse=True)
    assert torch.median(torch.where(torch.isfinite(dist), dist, torch.tensor(1e9))).item() == pytest.approx(
        median, rel=1e-5)


def test_several_epsilons_share_work_and_stay_valid():
    data = eval_data(60)
    eps = [0.02, 0.05, 0.1, 0.15, 0.2]
    tg = target()
    five = build("pgd", "linf", eps, {"steps": 10}).run(tg, data)
    curve = [c["robust_accuracy"] for c in five.metrics["robust_accuracy"]]
    assert curve == sorted(curve, reverse=True) and curve[-1] < curve[0]
    singles = [build("pgd", "linf", e, {"steps": 10}).run(tg, data) for e in eps]
    assert five.queries < sum(s.queries for s in singles)
    for point, single in zip(five.metrics["robust_accuracy"], singles, strict=True):
        assert point["robust_accuracy"] <= single.metrics["robust_accuracy"][0]["robust_accuracy"] + 0.05


class _Cheat(EvasionAttack):
    """A broken attack: returns examples far outside the eps ball and the input bounds."""

    name = "cheat"

    def perturb(self, target, x, y, eps):
        return x + 5.0


def test_invalid_examples_never_count():
    data = eval_data(30)
    result = _Cheat(eps=0.05).run(target(), data)
    assert result.metrics["robust_accuracy"][0]["robust_accuracy"] == result.metrics["clean_accuracy"]
    assert result.metrics["constraint_violations"] > 0
    # Bastion's own invalid examples are a note about the evaluation, never a finding against the model
    assert any(f.metric == "constraint_violations" and f.severity == "info" and f.evidence["about"] == "evaluation"
               for f in EvasionFamily({}, 0).judge([result]))


def test_result_round_trips_through_json():
    from bastion.core.results import Result

    result = build("deepfool", "l2", [0.5, 1.0], {}).run(target(), eval_data(20))
    again = Result.from_json(result.to_json())
    assert again.metrics == result.metrics and again.params == result.params
