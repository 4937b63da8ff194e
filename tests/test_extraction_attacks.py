"""Extraction attacks: exact equation solving, budgets and query accounting, fidelity curves, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_wine

from bastion.attacks.extraction import Copycat, EquationSolving, JacobianAugmentation, KnockoffNets, parse_budgets
from bastion.attacks.extraction.substitute import default_substitute
from bastion.core.errors import AccessError, ParameterError, QueryBudgetExceeded
from bastion.core.target import Access
from bastion.families import judged
from bastion.models import load_target
from tests.extraction_fixtures import FAST, canonical, logistic_victim


@pytest.fixture(scope="module")
def digits(digits_demo):
    return digits_demo, load_target(digits_demo.model_path, device="cpu")


@pytest.mark.parametrize("loader,n_classes", [(load_breast_cancer, 2), (load_wine, 3)])
def test_equation_solving_recovers_logistic_regression_exactly(loader, n_classes):
    model, target, data = logistic_victim(loader)
    attack = EquationSolving(transfer_samples=50, ood_samples=200)
    result = attack.run(target, data)
    weights, bias = canonical(model)
    d = data.x.shape[1]
    assert d + 1 == result.metrics["unknowns_per_class"] and result.metrics["assumption_holds"] is True
    # d + 1 equations, the answers moved off saturation asked again, and the checks of the logistic assumption
    assert result.queries == d + 1 + result.metrics["retried_queries"] + attack.checks
    assert np.abs(attack.weights_ - weights).max() < 1e-6
    assert np.abs(attack.bias_ - bias).max() < 1e-6
    assert result.metrics["fidelity"] == 1.0 and result.metrics["fidelity_ood"] == 1.0
    assert np.allclose(result.metrics["parameters"]["weights"], weights, atol=1e-6)
    assert judged(result).findings[0].severity == "critical"


def test_equation_solving_random_design_and_refusals():
    model, target, data = logistic_victim(load_wine)
    attack = EquationSolving(design="random", monitor=False, transfer_samples=0)
    attack.run(target, data)
    weights, _ = canonical(model)
    assert np.abs(attack.weights_ - weights).max() < 1e-4  # random points: worse conditioned, still close
    with pytest.raises(AccessError):
        EquationSolving().run(target.restrict(Access.LABELS), data)
    with pytest.raises(ParameterError, match="d \\+ 1 = 14"):
        EquationSolving(budget=10).run(target, data)
    with pytest.raises(ParameterError):
        EquationSolving(design="grid")


def test_equation_solving_under_rounding_retries_and_counts_queries():
    model, target, data = logistic_victim(load_breast_cancer)
    attack = EquationSolving(defense="rounding:4", monitor=False, transfer_samples=0, ood_samples=200)
    result = attack.run(target, data)
    weights, _ = canonical(model)
    assert result.queries == 31 + result.metrics["retried_queries"] + attack.checks > 31 + attack.checks
    assert result.queries == target.queries  # evaluation queries are not charged to the attacker
    assert 1e-6 < np.abs(attack.weights_ - weights).max() < 0.05  # rounding costs precision, not the copy
    assert result.metrics["fidelity"] > 0.99
    capped = EquationSolving(budget=31, defense="rounding:4", monitor=False, transfer_samples=0)
    assert capped.run(target, data).queries == 31


def test_budgets_parse_and_validate():
    assert parse_budgets("1000,100") == [100, 1000]
    assert parse_budgets(50) == [50]
    for bad in ("0,10", "ten", [-1]):
        with pytest.raises(ParameterError):
            parse_budgets(bad)
    with pytest.raises(ParameterError):
        KnockoffNets(sampling="greedy")
    with pytest.raises(ParameterError):
        Copycat(soft="maybe")


def test_knockoff_fidelity_rises_with_budget_and_spends_exactly(digits):
    demo, target = digits
    before = target.queries
    result = KnockoffNets(budget=[25, 400], **FAST).run(target, demo.test, pool=demo.train)
    curve = result.metrics["curve"]
    assert [c["budget"] for c in curve] == [25, 400] and [c["queries"] for c in curve] == [25, 400]
    assert result.queries == 400 == target.queries - before  # evaluation queries are not charged
    assert curve[1]["fidelity"] > curve[0]["fidelity"] + 0.05
    assert curve[1]["fidelity"] > 0.9 and curve[1]["accuracy"] > 0.85
    assert [f["budget"] for f in result.metrics["fidelity"]] == [25, 400]
    assert 0.0 <= curve[1]["transfer_success"] <= 1.0
    json.loads(result.to_json())


def test_adaptive_knockoff_and_jacobian_spend_the_budget(digits):
    demo, target = digits
    adaptive = KnockoffNets(budget=150, sampling="adaptive", query_batch=16, **FAST)
    result = adaptive.run(target.restrict(Access.SCORES), demo.test, pool=demo.train)
    assert result.queries == 150 and sum(result.metrics["arm_pulls"]) == 150
    assert result.metrics["fidelity"] > 0.6
    jacobian = JacobianAugmentation(budget=[60, 200], n_seed=30, round_epochs=3, **FAST)
    result = jacobian.run(target.restrict(Access.LABELS), demo.test, pool=demo.train)
    assert result.queries == 200 and result.metrics["augmentation_rounds"] >= 2
    logged = jacobian.query_log_.inputs
    assert len(logged) == 200 and logged.min() >= 0.0 and logged.max() <= 1.0
    pool = torch.as_tensor(demo.train.x).reshape(len(demo.train.x), -1)
    synthetic = logged[30:]
    assert torch.cdist(synthetic, pool).min(dim=1).values.gt(1e-6).all()  # new points, not pool inputs
    assert result.metrics["access"] == "labels"


def test_attack_respects_target_budget_and_access(digits):
    demo, target = digits
    limited = load_target(demo.model_path, device="cpu", max_queries=100)
    with pytest.raises(QueryBudgetExceeded):
        Copycat(budget=150, **FAST).run(limited, demo.test, pool=demo.train)
    partial = Copycat(budget=[60, 150], **FAST).run(load_target(demo.model_path, device="cpu", max_queries=100),
                                                    demo.test, pool=demo.train)
    assert partial.status == "partial" and "query budget spent" in partial.reason and partial.queries == 60
    assert [c["budget"] for c in partial.metrics["curve"]] == [60]
    with pytest.raises(AccessError):
        KnockoffNets(budget=50, soft=True, **FAST).run(target.restrict(Access.LABELS), demo.test, pool=demo.train)
    with pytest.raises(ParameterError, match="needs --pool"):
        Copycat(budget=50).run(target, demo.test)


def test_default_substitute_and_arch_factory(digits, tmp_path):
    cnn = default_substitute((1, 8, 8), 10, torch.rand(20, 1, 8, 8))
    mlp = default_substitute((30,), 2, torch.rand(20, 30) * 100)
    assert cnn(torch.rand(3, 1, 8, 8)).shape == (3, 10) and mlp(torch.rand(3, 30)).shape == (3, 2)
    assert any(isinstance(m, torch.nn.Conv2d) for m in cnn.modules())
    demo, target = digits
    result = Copycat(budget=60, arch="bastion.demo.models:digits_cnn", **FAST).run(target, demo.test,
                                                                                   pool=demo.train)
    assert result.queries == 60
    bad = tmp_path / "wrongarch.py"
    bad.write_text("from torch import nn\ndef net():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n")
    with pytest.raises(ParameterError, match="3"):
        Copycat(budget=60, arch=f"{bad}:net", **FAST).run(target, demo.test, pool=demo.train)


def test_cli_extraction_json(digits_demo):
    run = subprocess.run(
        [sys.executable, "-m", "bastion", "attack", "extraction", "copycat", str(digits_demo.model_path),
         "--pool", str(digits_demo.train_path), "--data", str(digits_demo.test_path), "--budget", "40,120",
         "--epochs", "5", "--min-steps", "50", "--transfer-samples", "50", "--ood-samples", "100",
         "--device", "cpu", "--json"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["family"] == "extraction" and out["attack"] == "copycat" and out["queries"] == 120
    assert [f["budget"] for f in out["metrics"]["fidelity"]] == [40, 120]
    assert [a["budget"] for a in out["metrics"]["accuracy"]] == [40, 120]
    assert "detected" in out["metrics"]["prada"]
