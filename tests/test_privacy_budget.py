"""Budgets keep partial results for the reference-model attacks (LiRA, RMIA, shadow models): the reference models
are trained first, the target is queried in balanced chunks, and a stop keeps the candidates it answered."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.core.errors import BudgetSpent
from bastion.core.registry import get
from tests.privacy_fixtures import digits_split, mlp, overfit_target, single_thread

QUICK = {"arch": mlp, "n_reference": 4, "epochs": 3, "batch_size": 64, "n_bootstrap": 20, "seed": 0}


def _run(name: str, budget: int | None, **params):
    members, nonmembers, population = digits_split()
    target = overfit_target()
    target.counter.budget = budget
    with single_thread():
        return get("attacks", name, "privacy")(**{**QUICK, **params}).run(
            target, None, members=members.head(48), nonmembers=nonmembers.head(48), population=population)


def _count_training(monkeypatch) -> list[int]:
    from bastion.attacks.privacy import reference_attack

    calls: list[int] = []
    real = reference_attack.train_references

    def counted(*args, **kwargs):
        calls.append(len(args[3]))  # the masks: one row per reference model
        return real(*args, **kwargs)

    monkeypatch.setattr(reference_attack, "train_references", counted)
    return calls


def test_a_budget_stops_lira_midway_and_resume_continues_it_without_training_again(tmp_path, monkeypatch):
    full = _run("lira", None)  # no checkpoint folder: the uninterrupted run
    monkeypatch.setenv("BASTION_CHECKPOINTS", str(tmp_path))  # as `bastion assess` sets it in the run store
    calls = _count_training(monkeypatch)
    part = _run("lira", 70)  # the first chunk (32 members + 32 non-members) fits, the second does not
    assert full.status == "complete" and part.status == "partial" and calls == [4]
    assert "32 of 48 members and 32 of 48 non-members" in part.reason and "4 trained reference models" in part.reason
    assert "kept for --resume" in part.reason and len(list(tmp_path.glob("lira-*.npz"))) == 1
    assert part.metrics["n_members"] == 32 and part.queries == 64
    # the measured part is exactly what the uninterrupted run measured for those candidates
    np.testing.assert_allclose(part.samples["member_scores"], full.samples["member_scores"][:32])
    np.testing.assert_allclose(part.samples["nonmember_scores"], full.samples["nonmember_scores"][:32])
    # --resume: the stored reference models are loaded (none trained) and only the 32 unscored candidates asked
    resumed = _run("lira", None)
    assert calls == [4] and resumed.status == "complete" and resumed.queries == 32
    assert resumed.metrics["resumed_from_checkpoint"] is True
    np.testing.assert_allclose(resumed.samples["member_scores"], full.samples["member_scores"])
    np.testing.assert_allclose(resumed.samples["nonmember_scores"], full.samples["nonmember_scores"])
    assert resumed.metrics["auc"] == full.metrics["auc"] and resumed.metrics["tpr_at_fpr"] == full.metrics["tpr_at_fpr"]
    assert not list(tmp_path.glob("*.npz"))  # a finished job forgets its checkpoint


def test_a_checkpoint_of_another_job_is_never_used(tmp_path, monkeypatch):
    monkeypatch.setenv("BASTION_CHECKPOINTS", str(tmp_path))
    calls = _count_training(monkeypatch)
    _run("lira", 70)
    (saved,) = tmp_path.glob("lira-*.npz")
    other = _run("lira", 70, seed=1)  # another seed: other reference models, trained anew
    assert calls == [4, 4] and "resumed_from_checkpoint" not in other.metrics
    # a file whose recorded digest does not match its name is ignored, not trusted
    twin = next(p for p in tmp_path.glob("lira-*.npz") if p != saved)
    twin.write_bytes(saved.read_bytes())
    _run("lira", 70, seed=1)
    assert calls == [4, 4, 4]


@pytest.mark.parametrize("name", ["rmia", "shadow"])
def test_rmia_and_shadow_models_keep_their_partial_scores(name):
    params = {"n_population": 100} if name == "rmia" else {}
    part = _run(name, 170 if name == "rmia" else 70, **params)  # RMIA first asks for its 100 population records
    assert part.status == "partial" and part.metrics["n_members"] == 32 and part.metrics["n_nonmembers"] == 32
    assert np.isfinite(part.samples["member_scores"]).all()


def test_a_budget_too_small_for_one_chunk_is_an_error_not_an_empty_result():
    with pytest.raises(BudgetSpent):
        _run("lira", 10)
