"""Target: access levels, batching, query counting and budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bastion.core.errors import AccessError, ParameterError, QueryBudgetExceeded
from bastion.core.target import Access, FunctionTarget, TorchTarget


def _linear(n_in: int = 4, n_out: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(n_in, n_out)


def test_access_levels_are_ordered():
    assert Access.LABELS < Access.SCORES < Access.GRADIENTS
    assert Access.parse("labels") is Access.LABELS
    with pytest.raises(ParameterError):
        Access.parse("everything")


def test_torch_target_counts_every_sample_and_batches():
    target = TorchTarget(_linear(), (4,), device="cpu", batch_size=7)
    x = torch.rand(20, 4)
    logits = target.logits(x)
    assert logits.shape == (20, 3)
    assert torch.allclose(logits, target.model(x))
    assert target.queries == 20
    assert torch.allclose(target.probabilities(x).sum(-1), torch.ones(20))
    assert target.labels(x).dtype == torch.int64
    assert target.queries == 60


def test_gradients_flow_through_a_white_box_target():
    target = TorchTarget(_linear(), (4,), device="cpu")
    x = torch.rand(5, 4, requires_grad=True)
    target.logits(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_budget_is_enforced_before_the_call():
    target = TorchTarget(_linear(), (4,), device="cpu", max_queries=10)
    target.labels(torch.rand(8, 4))
    with pytest.raises(QueryBudgetExceeded, match="8 of 10"):
        target.labels(torch.rand(3, 4))
    assert target.queries == 8
    assert target.counter.remaining == 2


def test_label_only_view_refuses_scores_and_shares_the_counter():
    base = TorchTarget(_linear(), (4,), device="cpu")
    labels_only = base.restrict("labels")
    assert labels_only.labels(torch.rand(4, 4)).shape == (4,)
    with pytest.raises(AccessError, match="scores access"):
        labels_only.logits(torch.rand(2, 4))
    with pytest.raises(AccessError):
        labels_only.restrict("gradients")
    assert base.queries == 4


def test_score_view_gives_no_gradient():
    scores = TorchTarget(_linear(), (4,), device="cpu").restrict(Access.SCORES)
    x = torch.rand(3, 4, requires_grad=True)
    assert not scores.logits(x).requires_grad


def test_function_target_checks_output_shape_and_converts_probabilities():
    def proba(x: np.ndarray) -> np.ndarray:
        p = np.full((len(x), 3), 0.2)
        p[:, 1] = 0.6
        return p

    target = FunctionTarget(proba, 3, (4,), output="probabilities")
    assert target.access == Access.SCORES
    assert torch.equal(target.labels(np.zeros((5, 4), np.float32)), torch.ones(5, dtype=torch.long))
    assert torch.allclose(target.logits(np.zeros((2, 4))).softmax(-1), torch.tensor([[0.2, 0.6, 0.2]] * 2))
    bad = FunctionTarget(lambda x: np.zeros((len(x), 2)), 3, (4,))
    with pytest.raises(ParameterError, match="returned shape"):
        bad.probabilities(np.zeros((2, 4)))


def test_wrong_input_shape_and_bad_construction_are_clear_errors():
    target = TorchTarget(_linear(), (4,), device="cpu")
    with pytest.raises(ParameterError, match="does not match"):
        target.logits(torch.rand(2, 5))
    with pytest.raises(ParameterError):
        FunctionTarget(lambda x: x, 1, (4,))
    with pytest.raises(ParameterError):
        TorchTarget(_linear(), (4,), device="cpu", bounds=(1.0, 0.0))


def test_device_selection():
    from bastion.core.device import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ParameterError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(ParameterError):
        resolve_device("tpu")
