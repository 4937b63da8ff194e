"""Input transforms and output hardening: exact values, BPDA forms, and gradient masking exposed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import median_filter

from bastion.core import registry
from bastion.core.errors import ParameterError
from bastion.core.target import TorchTarget
from bastion.defenses.preprocess.transforms import (
    MedianSmooth,
    Quantize,
    Transformed,
    bit_depth,
    decided_by,
    straight_through,
)
from bastion.families import judged

from .mitigation_fixtures import digits, mlp_target


def test_quantize_maps_to_the_nearest_level_within_bounds():
    x = torch.tensor([[0.0, 0.12, 0.13, 0.5, 0.74, 0.76, 1.0, 1.3]])
    out = Quantize(levels=5)(x)  # levels 0, .25, .5, .75, 1
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, 0.25, 0.5, 0.75, 0.75, 1.0, 1.0]]))
    shifted = Quantize(levels=3, bounds=(-1.0, 1.0))(torch.tensor([[-0.9, -0.4, 0.6]]))
    assert torch.allclose(shifted, torch.tensor([[-1.0, 0.0, 1.0]]))
    assert bit_depth(1).levels == 2 and bit_depth(4).levels == 16
    with pytest.raises(ParameterError):
        Quantize(levels=1)


@pytest.mark.parametrize("window", [3, 5])
def test_median_smoothing_matches_scipy(window):
    x = torch.rand(4, 2, 9, 7, generator=torch.Generator().manual_seed(0))
    ours = MedianSmooth(window)(x).numpy()
    ref = median_filter(x.numpy(), size=(1, 1, window, window), mode="nearest")  # edges repeated
    np.testing.assert_allclose(ours, ref, atol=1e-7)


def test_straight_through_keeps_values_and_passes_gradients():
    model = Transformed(Quantize(levels=2), torch.nn.Flatten())
    x = torch.rand(3, 1, 4, 4, requires_grad=True)
    plain = model(x)
    (masked,) = torch.autograd.grad(plain.sum(), x)
    assert masked.abs().sum() == 0  # rounding's gradient is zero: a naive attack sees nothing
    with straight_through(model):
        bpda = model(x)
        (grad,) = torch.autograd.grad(bpda.sum(), x)
    assert torch.equal(bpda, plain) and torch.allclose(grad, torch.ones_like(grad))
    assert model.transform.straight_through is False  # restored after the block


def test_decided_by_keeps_the_decision_and_the_gradient():
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]], requires_grad=True)
    decision = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])  # sample 0 decided differently (a tie break)
    out = decided_by(scores, decision)
    assert out.argmax(-1).tolist() == [1, 1]
    (grad,) = torch.autograd.grad(out.sum(), scores)
    assert torch.equal(grad, torch.ones_like(grad))
    assert torch.equal(out[1], scores[1])  # agreeing rows are untouched


def test_squeezing_masks_gradients_and_bpda_exposes_it():
    _, test = digits()
    defense = registry.get("defenses", "squeeze")(bits=1, eps=[0.2], attack="pgd")
    result = defense.run(mlp_target(), test.head(150))
    m = result.metrics
    naive = m["robust_accuracy_after_naive"][0]["robust_accuracy"]
    adaptive = m["robust_accuracy_after"][0]["robust_accuracy"]
    assert m["evaluation"]["adaptive"] == "bpda"
    assert naive >= 0.8 and naive - adaptive >= 0.2  # the naive attack is blind; BPDA is not
    assert any(f.metric == "masked_robust_accuracy" and f.severity == "high" for f in judged(result).findings)
    assert isinstance(defense.artifact_, Transformed)
    assert m["clean_accuracy_before"] - m["clean_accuracy_after"] == pytest.approx(m["clean_accuracy_cost"])


def test_spatial_smoothing_refuses_tabular_inputs():
    target = TorchTarget(torch.nn.Linear(5, 2), (5,), device="cpu")
    defense = registry.get("defenses", "spatial-smooth")(window=3, eps=[0.1], attack="pgd")
    _, test = digits()
    with pytest.raises(ParameterError, match="image inputs"):
        defense.run(target, test)


@pytest.mark.parametrize("name,params", [("round", {"decimals": 1}), ("top-k", {"k": 1}), ("label-only", {}),
                                         ("reverse-sigmoid", {})])
def test_output_hardening_gives_no_robustness_under_bpda(name, params):
    _, test = digits()
    data = test.head(100)
    defense = registry.get("defenses", name)(eps=[0.1], attack="pgd", **params)
    m = defense.run(mlp_target(), data).metrics
    before, after = m["robust_accuracy_before"][0], m["robust_accuracy_after"][0]
    assert m["top1_agreement"] >= 0.97
    assert abs(after["robust_accuracy"] - before["robust_accuracy"]) <= 0.05  # hides gradients, adds nothing
    assert m["robust_accuracy_after_naive"][0]["robust_accuracy"] >= after["robust_accuracy"]
    assert defense.defended_.access.name in ("SCORES", "LABELS")
