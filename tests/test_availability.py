"""Availability: sponge examples, early-exit slowdown, input size, energy counters and the judgement.

Nothing here asserts a time: densities, exit depths, accepted sizes and counters are compared instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bastion.attacks.availability.deepsloth import EarlyExitSlowdown
from bastion.attacks.availability.energy import NOT_EXPOSED, EnergyMeter
from bastion.attacks.availability.input_size import InputSize
from bastion.attacks.availability.measure import ActivationProbe, fixed_threads
from bastion.attacks.availability.sponge import Sponge, SpongeGA
from bastion.core import registry
from bastion.core.errors import ParameterError
from bastion.core.results import Result
from bastion.core.target import TorchTarget
from bastion.core.training import Trainer
from bastion.demo.datasets import digits
from bastion.demo.early_exit import EarlyExitCNN, save_early_exit, train_early_exit
from bastion.evaluation.metrics import bootstrap_ratio
from bastion.families.availability_verdicts import judge_availability
from bastion.models import load_target

FAST = {"repeats": 1, "warmup": 1, "n_bootstrap": 100, "energy": False}


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def relu_target(data):
    train, _ = data
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    with fixed_threads(1):  # a model this small trains fastest on one thread
        Trainer(epochs=3, device="cpu").fit(model, train.x, train.y)
    return TorchTarget(model, (1, 8, 8), device="cpu")


@pytest.fixture(scope="module")
def early_exit(data):
    return train_early_exit(data[0], epochs=10)


def test_sponge_raises_density_above_noise_and_natural(relu_target, data):
    test = data[1].head(64)
    probe = ActivationProbe(relu_target.model)
    noise = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sponge = Sponge(steps=40, **FAST).craft(relu_target, torch.as_tensor(test.x))
    assert sponge.min() >= 0 and sponge.max() <= 1
    natural_d, noise_d, sponge_d = (probe.density(x)[0].mean() for x in (torch.as_tensor(test.x), noise, sponge))
    assert sponge_d > noise_d + 0.03 and sponge_d > natural_d + 0.03


def test_sponge_run_reports_ratios_with_intervals_and_respects_eps(relu_target, data):
    test = data[1].head(32)
    result = Sponge(steps=20, eps=0.1, **FAST).run(relu_target, test)
    dims = {d["metric"]: d for d in result.metrics["dimensions"]}
    assert set(dims) >= {"density", "latency_ms"}
    density = dims["density"]["ratio"]
    assert density["ci"][0] <= density["estimate"] <= density["ci"][1] and density["estimate"] > 1.0
    assert set(dims["latency_ms"]["natural"]) == {"p50", "p95", "p99", "mean"}
    assert result.metrics["energy"]["available"] is False  # energy=False: said, not invented
    attack = np.asarray(result.samples["attack_density"])
    assert attack.shape == (32,) and Result.from_json(result.to_json()).metrics == result.metrics


def test_a_huge_or_invalid_eps_is_refused(relu_target, data):
    with pytest.raises(ParameterError, match="constrains nothing"):
        Sponge(eps=1.0, steps=1, **FAST).run(relu_target, data[1].head(4))
    with pytest.raises(ParameterError, match="constrains nothing"):
        EarlyExitSlowdown(eps=8.0, norm="l2", steps=1, **FAST).run(relu_target, data[1].head(4))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ParameterError):
            Sponge(eps=bad)
    with pytest.raises(ParameterError, match="objective"):
        Sponge(objective="l1")


def test_genetic_sponge_improves_density_without_gradients(relu_target, data):
    attack = SpongeGA(population=24, generations=8, **FAST)
    test = data[1].head(24)
    result = attack.run(relu_target, test)
    assert result.metrics["fitness"] == "density"
    history = result.metrics["best_fitness_per_generation"]
    assert all(b >= a for a, b in zip(history, history[1:], strict=False))  # elitism: never worse
    density = {d["metric"]: d for d in result.metrics["dimensions"]}["density"]
    assert density["ratio"]["estimate"] > 1.0


def test_early_exit_model_policy_is_what_forward_computes(early_exit, data):
    x = torch.as_tensor(data[1].x[:200])
    with torch.no_grad():
        exits, depth = early_exit.exit_logits(x), early_exit.exit_depth(x)
        chosen = torch.stack(exits)[depth, torch.arange(len(x))]
        assert torch.allclose(early_exit(x), chosen, atol=1e-5)
    assert (depth == 2).float().mean() < 0.3  # most natural inputs leave early
    with pytest.raises(ParameterError, match="pt2"):
        save_early_exit(early_exit, "model.pt2")
    with pytest.raises(ParameterError):
        EarlyExitCNN(threshold=1.5)


def test_deepsloth_drives_the_demo_model_to_full_depth(early_exit, data, tmp_path):
    path = save_early_exit(early_exit, tmp_path / "early-exit.pt")  # TorchScript keeps the exit policy
    target = load_target(path, device="cpu", trust=True)
    result = EarlyExitSlowdown(eps=0.2, steps=30, **FAST).run(target, data[1].head(100))
    cap = result.metrics["caps"][0]
    assert cap["attack_fraction"] >= 0.9 and cap["natural_fraction"] < 0.3 and cap["reached"]
    depth = {d["metric"]: d for d in result.metrics["dimensions"]}["depth"]
    assert depth["ratio"]["estimate"] > 1.3
    findings = judge_availability(result)
    assert any(f.metric == "full depth_reached" and f.severity == "high" for f in findings)
    assert all(f.atlas == ["AML.T0029"] and f.owasp[0].startswith("LLM10") for f in findings)


def test_early_exit_needs_a_model_with_exits(relu_target, data):
    with pytest.raises(ParameterError, match="no early exits"):
        EarlyExitSlowdown(steps=1, **FAST).run(relu_target, data[1].head(4))


def test_input_size_finds_the_limit_or_its_absence(data):
    test = data[1].head(4)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 10))
    result = InputSize(max_scale=4, n_inputs=2, repeats=1, n_bootstrap=50).run(
        TorchTarget(conv, (1, 8, 8), device="cpu"), test)
    assert result.metrics["largest_accepted_scale"] == 4 and result.metrics["limit"] == "none up to ×4"
    assert [s["shape"] for s in result.metrics["sizes"]] == [[1, 16, 16], [1, 32, 32]]
    fixed = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    result = InputSize(max_scale=4, n_inputs=2, repeats=1).run(TorchTarget(fixed, (1, 8, 8), device="cpu"), test)
    assert result.metrics["limit"].startswith("refused at ×2") and result.metrics["dimensions"] == []


def test_judgement_grades_ratios_and_caps():
    def result(estimate: float, caps: list | None = None) -> Result:
        dim = {"metric": "tokens", "natural": {"mean": 10}, "attack": {"mean": 10 * estimate},
               "ratio": {"estimate": estimate, "ci": [estimate, estimate]}}
        return Result("availability", "x", metrics={"dimensions": [dim], "caps": caps or []})

    assert [f.severity for f in judge_availability(result(1.5))] == ["info"]
    assert [f.severity for f in judge_availability(result(2.0))] == ["medium"]
    assert [f.severity for f in judge_availability(result(12.0))] == ["high"]
    capped = judge_availability(result(1.2, [{"name": "generation cap", "reached": True, "attack_fraction": 1.0,
                                              "natural_fraction": 0.0}]))
    assert [f.severity for f in capped] == ["info", "high"] and "generation cap" in capped[1].title


def test_bootstrap_ratio_interval_and_zero_denominator():
    rng = np.random.default_rng(0)
    interval = bootstrap_ratio(rng.normal(4, 1, 200), rng.normal(2, 0.5, 200))
    assert interval.low < 2.0 < interval.high and interval.high - interval.low < 0.3
    assert bootstrap_ratio([0, 0], [0, 0]).estimate == 1.0
    assert bootstrap_ratio([1, 2], [0, 0]).estimate == float("inf")


def test_rapl_counter_with_wrap_around(tmp_path, monkeypatch):
    domain = tmp_path / "intel-rapl:0"
    domain.mkdir()
    (domain / "max_energy_range_uj").write_text("1000000\n")
    readings = iter([900_000, 100_000])  # 0.9 J, then past the wrap at 1 J: 0.2 J spent
    (domain / "energy_uj").write_text("0\n")
    meter = EnergyMeter("cpu", root=tmp_path)
    assert meter.available and meter.source == "rapl"
    monkeypatch.setattr(meter, "_read", lambda: next(readings) / 1e6)
    joules, done = meter.joules(lambda: 5, min_seconds=0.0)
    assert joules == pytest.approx(0.2) and done == 0
    assert not EnergyMeter("cpu", root=tmp_path / "absent").available and "not exposed" in NOT_EXPOSED


def test_availability_attacks_are_registered():
    names = {e["name"] for e in registry.entries("attacks", "availability")}
    assert {"sponge", "sponge-ga", "early-exit", "input-size"} <= names


def test_density_of_an_early_exit_model_counts_skipped_layers_as_zero(early_exit, data):
    x = torch.as_tensor(data[1].head(16).x)
    probe = ActivationProbe(early_exit)
    batch = probe.density(x)[0]
    one_by_one = np.concatenate([probe.density(x[i:i + 1])[0] for i in range(len(x))])
    depth = early_exit.exit_depth(x).numpy()
    assert np.allclose(batch, one_by_one)
    assert batch[depth == 0].max(initial=0) < batch[depth == 2].min(initial=1)  # early leavers compute less
    with pytest.raises(ParameterError, match="part of the batch"):
        Sponge(steps=1, **FAST).craft(TorchTarget(early_exit, (1, 8, 8), device="cpu"), x)
