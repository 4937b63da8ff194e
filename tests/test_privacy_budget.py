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


def test_a_budget_stops_lira_midway_and_keeps_the_candidates_it_queried():
    full = _run("lira", None)
    part = _run("lira", 70)  # the first chunk (32 members + 32 non-members) fits, the second does not
    assert full.status == "complete" and part.status == "partial"
    assert "32 of 48 members and 32 of 48 non-members" in part.reason and "4 trained reference models" in part.reason
    assert part.metrics["n_members"] == 32 and part.queries == 64
    # the measured part is exactly what the uninterrupted run measured for those candidates
    np.testing.assert_allclose(part.samples["member_scores"], full.samples["member_scores"][:32])
    np.testing.assert_allclose(part.samples["nonmember_scores"], full.samples["nonmember_scores"][:32])
    # --resume runs the job again with the budget given then (none: unlimited): the uninterrupted figures
    resumed = _run("lira", None)
    assert resumed.metrics["auc"] == full.metrics["auc"] and resumed.metrics["tpr_at_fpr"] == full.metrics["tpr_at_fpr"]


@pytest.mark.parametrize("name", ["rmia", "shadow"])
def test_rmia_and_shadow_models_keep_their_partial_scores(name):
    params = {"n_population": 100} if name == "rmia" else {}
    part = _run(name, 170 if name == "rmia" else 70, **params)  # RMIA first asks for its 100 population records
    assert part.status == "partial" and part.metrics["n_members"] == 32 and part.metrics["n_nonmembers"] == 32
    assert np.isfinite(part.samples["member_scores"]).all()


def test_a_budget_too_small_for_one_chunk_is_an_error_not_an_empty_result():
    with pytest.raises(BudgetSpent):
        _run("lira", 10)
