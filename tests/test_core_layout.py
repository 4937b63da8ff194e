"""CPU execution choices of a TorchTarget: channels-last layout (verified) and cache-sized batches."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bastion.attacks.evasion.gradient import PGD
from bastion.attacks.evasion.search import EpsSearch
from bastion.core.errors import ParameterError
from bastion.core.layout import MAX_BATCH, MIN_BATCH
from bastion.core.target import TorchTarget
from bastion.demo.models import digits_cnn, tabular_mlp


class ViewAfterConv(nn.Module):
    """Flattens with `.view`, which a channels-last activation refuses."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).relu()
        return self.fc(h.view(h.size(0), -1))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return digits_cnn()


def _grad(target: TorchTarget, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(target.logits(x)[:, 0].sum(), x)
    return g


def test_cnn_runs_channels_last_with_the_same_outputs_and_gradients():
    x = torch.rand(50, 1, 8, 8)
    reference = TorchTarget(_cnn(), (1, 8, 8), device="cpu", memory_format="contiguous")
    fast = TorchTarget(_cnn(), (1, 8, 8), device="cpu")
    assert reference.memory_format == "contiguous" and fast.memory_format == "channels_last"
    assert fast.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast.logits(x), reference.logits(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_grad(fast, x), _grad(reference, x), rtol=1e-4, atol=1e-6)


def test_contiguous_undoes_an_earlier_conversion_of_the_same_module():
    model = _cnn()
    assert TorchTarget(model, (1, 8, 8), device="cpu").memory_format == "channels_last"
    assert TorchTarget(model, (1, 8, 8), device="cpu", memory_format="contiguous").memory_format == "contiguous"
    assert model[0].weight.is_contiguous() and model[2].weight.is_contiguous()


def test_layout_dependent_model_stays_contiguous_and_works():
    target = TorchTarget(ViewAfterConv(), (1, 8, 8), device="cpu", memory_format="channels_last")
    assert target.memory_format == "contiguous"
    assert target.model.conv.weight.is_contiguous()
    assert target.logits(torch.rand(5, 1, 8, 8)).shape == (5, 3)


def test_torchscript_is_left_contiguous_unless_asked():
    scripted = torch.jit.script(_cnn())
    assert TorchTarget(scripted, (1, 8, 8), device="cpu").memory_format == "contiguous"
    assert TorchTarget(scripted, (1, 8, 8), device="cpu", memory_format="channels_last").memory_format == \
        "channels_last"


def test_memory_format_is_validated_and_mlps_are_left_alone():
    with pytest.raises(ParameterError, match="memory_format"):
        TorchTarget(_cnn(), (1, 8, 8), device="cpu", memory_format="nhwc")
    assert TorchTarget(tabular_mlp(), (30,), device="cpu").memory_format == "contiguous"


def test_batch_size_is_cache_sized_for_cnns_and_large_for_mlps():
    cnn = TorchTarget(_cnn(), (1, 8, 8), device="cpu")
    assert MIN_BATCH <= cnn.batch_size < MAX_BATCH  # 32x8x8 float activations: 8 KiB per image
    big = TorchTarget(nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.Flatten(), nn.Linear(64 * 64 * 64, 2)),
                      (3, 64, 64), device="cpu")
    assert big.batch_size == MIN_BATCH  # 1 MiB per image: the floor
    assert TorchTarget(tabular_mlp(), (30,), device="cpu").batch_size == MAX_BATCH
    assert TorchTarget(_cnn(), (1, 8, 8), device="cpu", batch_size=7).batch_size == 7


def test_pgd_result_does_not_depend_on_layout_or_batch_size():
    torch.manual_seed(1)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    model = _cnn()
    results = []
    for fmt, bs in (("contiguous", 512), ("auto", None), ("auto", 5)):
        target = TorchTarget(copy.deepcopy(model), (1, 8, 8), device="cpu", memory_format=fmt, batch_size=bs)
        adv, claimed = PGD(eps=0.2, steps=5, seed=0).perturb_judged(target, x, y, 0.2)
        assert torch.equal(claimed, target.labels(adv) != y)  # the attack's verdict is the target's
        results.append(claimed)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_search_rejudges_claimed_successes_only():
    target = TorchTarget(_cnn(), (1, 8, 8), device="cpu")
    x = torch.rand(6, 1, 8, 8)
    y = target.labels(x)
    search = EpsSearch(target, x, y, [0.3], "linf")
    idx, probe = torch.arange(6), torch.zeros(6, dtype=torch.long)
    wrong = torch.ones(6, dtype=torch.bool)  # the attack claims success but returns the clean inputs
    fooled = search.record(idx, probe, x.clone(), claimed=wrong)
    assert not fooled.any()  # the target does not confirm: nothing counts
    assert search.curve()[0]["robust_accuracy"] == 1.0
