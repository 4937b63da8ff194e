"""`auto`: its sanity checks pass on an honest model, and models that mask their gradients (input quantisation,
a saturated softmax, a random layer, a gradient replaced by noise) are flagged by the checks and still broken by
the escalated evaluation."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.evasion.apgd import APGDCE
from bastion.attacks.evasion.auto import AutoAttack
from bastion.attacks.evasion.wrappers import masking_modules
from bastion.families import judged
from tests.evasion_fixtures import eval_data, masked, surrogate, target

EPS = 0.25  # above half a quantisation step (0.125), so that quantisation can be beaten at all


def checks(result) -> dict[int, bool]:
    return {c["id"]: c["passed"] for c in result.metrics["sanity_checks"]}


def robust(result) -> float:
    return result.metrics["robust_accuracy"][-1]["robust_accuracy"]


def test_auto_on_an_honest_model_passes_its_checks_and_beats_apgd():
    data = eval_data(60)
    result = AutoAttack(eps=[0.05, 0.1], seed=0).run(target(), data)
    assert sorted(checks(result)) == list(range(1, 11))
    for check in (1, 2, 3, 4, 5, 6, 7, 10):
        assert checks(result)[check], result.metrics["sanity_checks"]
    assert result.metrics["attacks"][:3] == ["apgd-ce", "apgd-t", "fab-t"]
    apgd = APGDCE(eps=[0.05, 0.1], steps=100).run(target(), data)
    for a, b in zip(result.metrics["robust_accuracy"], apgd.metrics["robust_accuracy"], strict=True):
        assert a["robust_accuracy"] <= b["robust_accuracy"]
    assert not [f for f in judged(result).findings if f.metric.startswith("sanity_check") and f.severity == "high"]


@pytest.mark.parametrize("kind,eps,flagged,escalation", [
    ("quantize", EPS, {3}, "BPDA"),
    ("saturate", EPS, {1, 3}, "BPDA"),
    ("noise", EPS, {2}, "EOT"),
    ("shatter", 0.15, {9}, "gradients look masked"),  # noise for a gradient: only the black box sees through
])
def test_masked_model_is_flagged_and_still_broken(kind, eps, flagged, escalation):
    data = eval_data(40)
    model = masked(kind)
    naive = APGDCE(eps=eps, steps=20).run(target(model), data)
    result = AutoAttack(eps=eps, seed=0).run(target(model), data)
    failed = {i for i, ok in checks(result).items() if not ok}
    assert flagged <= failed, result.metrics["sanity_checks"]
    assert any(escalation in e for e in result.metrics["escalations"]), result.metrics["escalations"]
    assert {f.metric for f in judged(result).findings} >= {f"sanity_check_{i}" for i in flagged}
    assert robust(result) <= 0.25, f"auto left {robust(result):.0%} robust"
    if kind != "noise":  # the masked gradient fools a plain gradient attack, not auto
        assert robust(naive) >= robust(result) + 0.3


def test_masking_layers_are_located():
    data = eval_data(40)
    x = torch.as_tensor(data.x)
    assert masking_modules(target(masked("quantize")), x) == ["0"]
    assert masking_modules(target(masked("saturate")), x) == ["1"]
    assert masking_modules(target(), x) == []


def test_auto_adapts_to_score_and_label_access():
    data = eval_data(30)
    scores = AutoAttack(eps=0.2, seed=0).run(target().restrict("scores"), data)
    assert scores.metrics["attacks"] == ["square"]
    assert robust(scores) < 0.5 * scores.metrics["clean_accuracy"]
    labels = AutoAttack(eps=0.2, seed=0, surrogate=surrogate()).run(target().restrict("labels"), data)
    assert labels.metrics["attacks"] == ["hopskipjump", "transfer"]
    assert robust(labels) < 0.5 * labels.metrics["clean_accuracy"]


def test_auto_is_reproducible():
    data = eval_data(30)
    a = AutoAttack(eps=[0.05, 0.1], seed=2).run(target(), data)
    b = AutoAttack(eps=[0.05, 0.1], seed=2).run(target(), data)
    assert a.metrics["robust_accuracy"] == b.metrics["robust_accuracy"]
    assert a.metrics["sanity_checks"] == b.metrics["sanity_checks"]
