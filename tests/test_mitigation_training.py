"""Adversarial training (PGD-AT, TRADES, fast-AT): real robustness gains, measured by `auto`, and early stopping."""

from __future__ import annotations

import pytest
import torch

from bastion.core import registry
from bastion.core.errors import AccessError, ParameterError
from bastion.defenses.training.adversarial import TRADES, FastAdversarialTraining, PGDAdversarialTraining, ascend
from bastion.defenses.training.base import reinitialize, trainable_copy
from bastion.families import judged
from bastion.models import load_target
from bastion.models.export import save_model
from bastion.models.metadata import ModelMetadata

from .mitigation_fixtures import digits, digits_mlp, mlp_target


def _robust(curve: list[dict], eps: float) -> float:
    return next(c["robust_accuracy"] for c in curve if abs(c["eps"] - eps) < 1e-9)


def test_pgd_at_triples_robust_accuracy_under_auto():
    train, test = digits()
    target = mlp_target()
    defense = PGDAdversarialTraining(eps=0.15, steps=5, epochs=8, lr=2e-3, eval_eps=[0.15], attack="auto")
    result = defense.run(target, test.head(150), train_data=train)
    m = result.metrics
    before, after = _robust(m["robust_accuracy_before"], 0.15), _robust(m["robust_accuracy_after"], 0.15)
    assert m["evaluation"]["attack"] == "auto"
    assert after >= 3 * before and after >= before + 0.15, (before, after)
    assert m["clean_accuracy_cost"] <= 0.05
    assert m["robust_accuracy_gain"][0]["gain"] == pytest.approx(after - before)
    # the original model is untouched and the hardened one is the artifact
    assert defense.artifact_ is not target.model and not defense.artifact_.training
    assert result.family == "defense" and result.attack == "adv-train"


@pytest.mark.parametrize("cls", [TRADES, FastAdversarialTraining])
def test_trades_and_fast_at_raise_robust_accuracy(cls):
    train, test = digits()
    defense = cls(eps=0.15, epochs=4, lr=2e-3, eval_eps=[0.15], attack="pgd")
    m = defense.run(mlp_target(), test.head(150), train_data=train).metrics
    before, after = _robust(m["robust_accuracy_before"], 0.15), _robust(m["robust_accuracy_after"], 0.15)
    assert after >= before + 0.1, (before, after)
    assert len(m["monitor_robust_accuracy"]) == m["epochs_run"] <= 4


def test_trades_loss_is_ce_plus_beta_kl():
    loss = TRADES(eps=0.1, beta=2.0).loss_fn()
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [1.0, -1.0, 0.0], [0.0, 2.0, 0.0]])
    y = torch.tensor([0, 1, 0, 1])
    clean, adv = logits[:2], logits[2:]
    kl = (clean.softmax(-1) * (clean.log_softmax(-1) - adv.log_softmax(-1))).sum(-1).mean()
    expected = torch.nn.functional.cross_entropy(clean, y[:2]) + 2.0 * kl
    assert loss(logits, y) == pytest.approx(float(expected), rel=1e-6)


def test_adversarial_examples_stay_in_the_ball_and_raise_the_loss():
    _, test = digits()
    model = mlp_target().model
    x, y = torch.as_tensor(test.x[:64]), torch.as_tensor(test.y[:64])
    for norm, eps in (("linf", 0.1), ("l2", 1.0)):
        adv = ascend(model, x, torch.zeros_like(x), lambda z: torch.nn.functional.cross_entropy(z, y, reduction="sum"),
                     eps, norm, 10, eps / 4, (0.0, 1.0))
        delta = (adv - x).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert float(size.max()) <= eps + 1e-5 and float(adv.min()) >= 0 and float(adv.max()) <= 1
        with torch.no_grad():
            gain = torch.nn.functional.cross_entropy(model(adv), y) - torch.nn.functional.cross_entropy(model(x), y)
        assert float(gain) > 0.5


def test_early_stopping_keeps_the_best_epoch(monkeypatch):
    train, test = digits()
    defense = FastAdversarialTraining(eps=0.1, epochs=6, eval_eps=None, attack="pgd", overfit_drop=0.2)
    snapshots: list[dict] = []
    curve = iter([0.30, 0.45, 0.50, 0.10, 0.60, 0.70])  # a collapse at epoch 4: catastrophic overfitting

    def monitor(model, x, y, bounds):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(curve)

    monkeypatch.setattr(defense, "monitor_accuracy", monitor)
    result = defense.run(mlp_target(), test.head(50), train_data=train.head(256))
    m = result.metrics
    assert m["early_stopped_at_epoch"] == 4 and m["epochs_run"] == 4 and m["best_epoch"] == 3
    best = snapshots[2]
    assert all(torch.equal(v, best[k]) for k, v in defense.artifact_.state_dict().items())
    assert any("catastrophic overfitting" in f.title for f in judged(result).findings)


def test_training_defenses_need_a_pytorch_model_and_training_data():
    train, test = digits()
    with pytest.raises(ParameterError, match="--train-data"):
        PGDAdversarialTraining(eps=0.1).run(mlp_target(), test)
    label_only = mlp_target().restrict("labels")
    with pytest.raises(AccessError):
        PGDAdversarialTraining(eps=0.1).run(label_only, test, train_data=train)
    with pytest.raises(ParameterError):
        PGDAdversarialTraining(eps=0.1, norm="l1")
    assert registry.get("defenses", "adv-train") is PGDAdversarialTraining
    assert registry.get("defenses", "fast-at") is FastAdversarialTraining


def test_torchscript_models_are_copied_and_cannot_be_reinitialised(tmp_path):
    path = save_model(digits_mlp().eval(), tmp_path / "mlp.pt", ModelMetadata(n_classes=10, input_shape=[1, 8, 8]))
    loaded = load_target(path, device="cpu").model  # TorchScript, as the CLI loads it
    for original in (loaded, torch.jit.load(str(path))):
        copy = trainable_copy(original)
        optimizer = torch.optim.SGD(copy.parameters(), lr=0.1)  # refuses non-leaf parameters
        copy(torch.rand(4, 1, 8, 8)).sum().backward()
        optimizer.step()
        assert not torch.equal(next(copy.parameters()), next(original.parameters()))
        with pytest.raises(ParameterError, match="re-initialise"):
            reinitialize(copy)
    eager = digits_mlp()
    before = eager[1].weight.clone()
    reinitialize(eager)
    assert not torch.equal(before, eager[1].weight)
