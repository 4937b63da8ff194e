"""Availability mitigations with proof: the sponge detector (thresholds from natural inputs only, plain and adaptive
sponges re-measured), input-size limits and deadlines; the availability family judges what they measure.

No time is asserted: densities, accepted sizes and fractions are compared.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bastion.attacks.availability.measure import ActivationProbe, fixed_threads
from bastion.attacks.availability.sponge import Sponge
from bastion.core.errors import ParameterError
from bastion.core.target import TorchTarget
from bastion.core.training import Trainer
from bastion.defenses.availability.request_limits import ResourceLimits
from bastion.defenses.availability.sponge_detect import SpongeDetect
from bastion.demo.datasets import digits
from bastion.families import judged

FAST = {"repeats": 1, "warmup": 1, "n_bootstrap": 50}


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def relu_target(data):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    with fixed_threads(1):
        Trainer(epochs=3, device="cpu").fit(model, data[0].x, data[0].y)
    return TorchTarget(model, (1, 8, 8), device="cpu")


def test_sponge_detect_catches_plain_sponges_and_bounds_adaptive_ones(relu_target, data):
    test = data[1].head(64)
    result = SpongeDetect(steps=30, **FAST).run(relu_target, test)
    m = result.metrics
    plain, adaptive = m["against"]
    assert plain["detected_by_density"] >= 0.9  # the plain sponge is far above natural density
    # the adaptive sponge stays under the threshold: flagged by density no more often than natural inputs are
    assert adaptive["detected_by_density"] <= m["false_alarms"]["by_density"] + 0.1
    assert adaptive["amplification"]["density"]["estimate"] < plain["amplification"]["density"]["estimate"]
    assert adaptive["amplification"]["density"]["estimate"] >= 1.0  # it still takes what the threshold leaves
    assert set(m["overhead"]) == {"plain_ms", "guarded_ms", "ratio"} and m["n_held_out"] == 32
    findings = judged(result).findings
    assert {f.metric for f in findings} == {"residual_plain_ratio", "residual_adaptive_ratio"}
    assert all(f.family == "availability" and "AML.T0029" in f.atlas for f in findings)


def test_sponge_detect_thresholds_come_from_natural_inputs_only(relu_target, data):
    test = data[1].head(32)
    x = torch.as_tensor(test.x)
    order = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    natural = ActivationProbe(relu_target.model).density(x[order[:16]])[0]
    a = SpongeDetect(fpr=0.1, steps=1, **FAST).run(relu_target, test).metrics["thresholds"]["density"]
    b = SpongeDetect(fpr=0.1, steps=20, **FAST).run(relu_target, test).metrics["thresholds"]["density"]
    assert a == b == pytest.approx(float(np.quantile(natural, 0.95)))
    with pytest.raises(ParameterError):
        SpongeDetect(fpr=0.0)
    with pytest.raises(ParameterError, match="at least 8"):
        SpongeDetect(**FAST).run(relu_target, test.head(4))


def test_adaptive_sponge_keeps_density_under_its_cap(relu_target, data):
    x = torch.as_tensor(data[1].head(16).x)
    probe = ActivationProbe(relu_target.model)
    natural = probe.density(x)[0]
    cap = float(np.quantile(natural, 0.9))
    crafted = Sponge(steps=20, max_density=cap, **FAST, energy=False).craft(relu_target, x)
    density = probe.density(crafted)[0]
    below = natural <= cap
    assert (density[below] <= cap + 1e-6).all() and density[below].mean() > natural[below].mean()
    with pytest.raises(ParameterError):
        Sponge(max_density=1.5)


class FullyConvolutional(nn.Module):
    """Accepts any input size (adaptive pooling): its cost grows with the input."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(8, 10))

    def forward(self, x):
        return self.body(x)


def test_resource_limits_refuse_larger_inputs_and_model_a_deadline(data):
    torch.manual_seed(0)
    target = TorchTarget(FullyConvolutional().eval(), (1, 8, 8), device="cpu")
    result = ResourceLimits(steps=3, **FAST).run(target, data[1].head(16))
    size, deadline = result.metrics["limits"]
    assert size["before"]["largest_scale"] >= 2 and size["after"]["largest_scale"] == 1  # the limit holds
    assert size["after"]["latency_ratio"] == 1.0 and size["natural_refused"] == 0.0
    assert deadline["deadline_ms"] > deadline["natural_ms"]["p99"] and deadline["natural_cut"] == 0.0
    sponge, early = deadline["against"]
    assert sponge["after"]["estimate"] <= sponge["worst_case_bound"] + 1e-9 and "not_applicable" in early
    findings = judged(result).findings
    assert {f.metric for f in findings} == {"residual_input_size_ratio", "residual_deadline_sponge_ratio"}
    with pytest.raises(ParameterError):
        ResourceLimits(max_scale=0.5)
