"""Access levels and refusals: score-only and label-only targets get the attacks they allow and a clear error for
the others; bad parameters fail early with one-line errors; the attacks are reachable from the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bastion.attacks.evasion.apgd import APGDDLR, APGDT
from bastion.attacks.evasion.cw import CarliniWagnerL2
from bastion.attacks.evasion.gradient import PGD
from bastion.attacks.evasion.hopskipjump import HopSkipJump
from bastion.attacks.evasion.square import Square
from bastion.attacks.evasion.transfer import Transfer
from bastion.core import registry
from bastion.core.errors import AccessError, ParameterError
from bastion.core.target import FunctionTarget
from tests.evasion_fixtures import eval_data, surrogate, target, trained

EVASION = ["fgsm", "pgd", "apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "cw", "deepfool", "square",
           "hopskipjump", "transfer", "eot", "bpda", "auto"]


def black_box(output: str) -> FunctionTarget:
    """The trained MLP behind a NumPy function answering probabilities or labels only."""
    model = trained()[0]

    def fn(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            p = model(torch.as_tensor(x)).softmax(-1).numpy()
        return p.argmax(1) if output == "labels" else p

    return FunctionTarget(fn, 10, (1, 8, 8), output=output)


def test_every_attack_is_registered():
    names = {e["name"] for e in registry.entries("attacks", "evasion")}
    assert set(EVASION) <= names


def test_score_only_target():
    data = eval_data(30)
    scores = black_box("probabilities")
    result = Square(eps=0.2, queries=300).run(scores, data)
    assert result.metrics["robust_accuracy"][0]["robust_accuracy"] < 0.5
    for attack in (PGD(eps=0.1), APGDT(eps=0.1), CarliniWagnerL2()):
        with pytest.raises(AccessError, match="gradients"):
            attack.run(scores, data)


def test_label_only_target():
    data = eval_data(30)
    labels = black_box("labels")
    result = HopSkipJump(eps=1.5, steps=6, init_evals=30).run(labels, data)
    assert result.metrics["robust_accuracy"][0]["robust_accuracy"] < 0.5
    transfer = Transfer(surrogate=surrogate(), eps=0.2, steps=20).run(labels, data)
    assert transfer.metrics["robust_accuracy"][0]["robust_accuracy"] < 0.5
    with pytest.raises(AccessError, match="scores"):
        Square(eps=0.1).run(labels, data)
    with pytest.raises(AccessError, match="gradients"):
        PGD(eps=0.1).run(labels, data)


def test_query_budget_is_enforced():
    from bastion.core.errors import QueryBudgetExceeded

    with pytest.raises(QueryBudgetExceeded):
        Square(eps=0.05, queries=1000).run(target(max_queries=500), eval_data(30))


@pytest.mark.parametrize("make", [
    lambda: PGD(eps=0.1, norm="l3"),
    lambda: PGD(eps=-0.1),
    lambda: PGD(eps="a,b"),
    lambda: CarliniWagnerL2(norm="linf"),
    lambda: Square(norm="l1"),
    lambda: HopSkipJump(norm="l1"),
    lambda: Transfer(surrogate=None, attack="square"),
])
def test_bad_parameters_fail_at_construction(make):
    with pytest.raises(ParameterError):
        make()


def test_refusals_at_run_time():
    data = eval_data(10)
    with pytest.raises(ParameterError, match="whole input range"):
        PGD(eps=1.0).run(target(), data)
    with pytest.raises(ParameterError, match="surrogate"):
        Transfer(eps=0.1).run(target(), data)
    for classes, attack, message in ((2, APGDDLR, "DLR needs at least 3"), (3, APGDT, "targeted DLR needs at least 4")):
        small = target(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, classes)), n_classes=None)
        few = eval_data(10)
        few.y = few.y % classes
        with pytest.raises(ParameterError, match=message):
            attack(eps=0.1).run(small, few)
        assert small.queries == 0


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    from bastion.cli.main import run

    with pytest.raises(SystemExit) as exit_info:
        run(list(args))
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_cli_runs_attacks_and_refuses_access(digits_demo, capsys):
    model, data = str(digits_demo.model_path), str(digits_demo.test_path)
    common = ["--data", data, "--n-samples", "40", "--device", "cpu", "--json"]
    code, out, err = _cli(capsys, "attack", "evasion", "square", model, *common, "--access", "scores",
                          "--eps", "0.2", "--queries", "200")
    assert code == 0, err
    assert json.loads(out)["metrics"]["robust_accuracy"][0]["eps"] == 0.2
    code, out, err = _cli(capsys, "attack", "evasion", "transfer", model, *common, "--access", "labels",
                          "--surrogate", model, "--eps", "0.2", "--steps", "10")
    assert code == 0, err
    assert json.loads(out)["params"]["surrogate"] == model
    code, out, err = _cli(capsys, "attack", "evasion", "pgd", model, *common, "--access", "labels")
    assert code == 2 and "needs gradients access" in err and "Traceback" not in err
    code, out, err = _cli(capsys, "attack", "evasion", "auto", model, *common, "--eps", "0.3")
    assert code == 0, err
    result = json.loads(out)
    assert len(result["metrics"]["sanity_checks"]) == 10
    assert result["metrics"]["robust_accuracy"][0]["robust_accuracy"] < 0.1


def test_hopskipjump_starts_from_other_samples_when_noise_never_fools():
    model = trained()[0]

    def fn(x: np.ndarray) -> np.ndarray:  # uniform noise (mean 0.5) always lands in class 0
        with torch.no_grad():
            labels = model(torch.as_tensor(x)).argmax(1).numpy()
        return np.where(x.reshape(len(x), -1).mean(1) > 0.35, 0, labels)

    labels = FunctionTarget(fn, 10, (1, 8, 8), output="labels")
    data = eval_data(200)
    mixed = data.subset(np.r_[np.flatnonzero(data.y == 0)[:8], np.flatnonzero(data.y == 3)[:4]])
    result = HopSkipJump(eps=3.0, steps=4, init_evals=20, init_tries=3).run(labels, mixed)
    assert result.metrics["clean_accuracy"] > 0.9
    assert result.metrics["unbounded_success_rate"] == 1.0  # the zeros start from the threes
