"""Functionally-equivalent extraction (Jagielski et al. 2020): exact recovery, signs, budgets, access, deeper nets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.attacks.extraction.fee import FunctionallyEquivalentExtraction
from bastion.core.data import Dataset
from bastion.core.errors import AccessError, ParameterError
from bastion.core.registry import get
from bastion.core.target import Access, FunctionTarget, TorchTarget

FAST = {"monitor": False, "transfer_samples": 20, "ood_samples": 500}
D, H, K = 10, 16, 3


def relu_net(depth: int = 1, seed: int = 0) -> nn.Module:
    """Random ReLU network on [0, 1]^D whose first-layer hyperplanes all cross the input box."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(D, H), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(H, H), nn.ReLU()]
    net = nn.Sequential(*layers, nn.Linear(H, K))
    with torch.no_grad():
        w = torch.randn(H, D, generator=gen)
        net[0].weight.copy_(w)
        net[0].bias.copy_(-(w * (0.2 + 0.6 * torch.rand(H, D, generator=gen))).sum(1))
        for layer in list(net)[2::2]:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
    return net.eval()


@pytest.fixture(scope="module")
def victim():
    net = relu_net()
    x = torch.rand(2000, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = net(x).argmax(1)
    return net, x, Dataset(x.numpy(), labels.numpy(), "held out")


def scores_target(net: nn.Module, max_queries: int | None = None):
    return TorchTarget(net, (D,), device="cpu", max_queries=max_queries).restrict(Access.SCORES)


def test_recovers_the_network_up_to_scale_and_permutation(victim):
    net, x, data = victim
    target = scores_target(net)
    attack = FunctionallyEquivalentExtraction(hidden=H, **FAST)
    result = attack.run(target, data)
    m = result.metrics
    assert m["fidelity"] >= 0.999 and m["fidelity_ood"] >= 0.999
    assert m["units"] == H and m["stopped"] == "done" and m["one_hidden_layer"]
    assert m["fit_residual"] < 1e-4 and m["sign_margin"] > 0.4
    assert result.queries == target.queries == m["curve"][0]["queries"] > 0
    with torch.no_grad():
        truth, copy = net(x), attack.copy_(x)
    assert float((copy - truth).abs().max() / truth.abs().max()) < 1e-3
    true_rows = torch.cat([net[0].weight, net[0].bias[:, None]], 1).detach().double()
    found = torch.cat([attack.weights_, attack.biases_[:, None]], 1).double()
    cos = (found @ true_rows.T) / (found.norm(dim=1)[:, None] * true_rows.norm(dim=1))
    best = cos.max(dim=1)
    assert bool((best.values > 0.9999).all())  # the same sign: positive scale, not just the same hyperplane
    assert sorted(best.indices.tolist()) == list(range(H))  # a permutation of the true units
    assert get("attacks", "fee", family="extraction") is FunctionallyEquivalentExtraction


def test_probability_api_and_unknown_width(victim):
    net, x, data = victim

    def answer(a):
        with torch.no_grad():
            return net(torch.as_tensor(a)).softmax(-1).numpy()

    target = FunctionTarget(answer, K, (D,), "probabilities", name="softmax api")
    attack = FunctionallyEquivalentExtraction(hidden=None, **FAST)
    result = attack.run(target, data)
    assert result.metrics["units"] == H and result.metrics["fidelity"] >= 0.999
    with torch.no_grad():
        gap = (attack.copy_(x).softmax(-1) - net(x).softmax(-1)).abs().max()
    assert float(gap) < 1e-4  # centred log-probabilities: the same probabilities


def test_budgets_stop_clearly(victim):
    net, _, data = victim
    with pytest.raises(ParameterError, match="budget"):
        FunctionallyEquivalentExtraction(hidden=H, budget=100, **FAST).run(scores_target(net), data)
    result = FunctionallyEquivalentExtraction(hidden=H, budget="4000,30000", **FAST).run(scores_target(net), data)
    first, last = result.metrics["curve"]
    assert first["queries"] <= 4000 and last["queries"] <= 30000
    assert last["fidelity"] >= 0.999 and result.metrics["stopped"] == "done"
    small = FunctionallyEquivalentExtraction(hidden=H, budget=3000, **FAST).run(scores_target(net), data)
    assert small.metrics["stopped"] == "budget" and small.queries <= 3000
    assert small.metrics["fidelity"] < 0.999 or small.metrics["units"] < H
    with pytest.raises(ParameterError):
        FunctionallyEquivalentExtraction(hidden=0)


def test_labels_only_is_refused(victim):
    net, _, data = victim
    with pytest.raises(AccessError):
        FunctionallyEquivalentExtraction(**FAST).run(TorchTarget(net, (D,), device="cpu").restrict("labels"), data)


def test_two_hidden_layers_are_reported_not_copied():
    net = relu_net(depth=2, seed=3)
    x = torch.rand(2000, D, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        data = Dataset(x.numpy(), net(x).argmax(1).numpy(), "held out")
    result = FunctionallyEquivalentExtraction(**FAST).run(scores_target(net), data)
    m = result.metrics
    assert not m["one_hidden_layer"] and m["fit_residual"] > 0.01
    assert m["fidelity"] < 0.99
