"""Membership inference: leaks are found on an overfit model, nothing is found where nothing leaks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestClassifier
from torch import nn

from bastion.attacks.privacy.base import logit_confidence, split_dataset
from bastion.attacks.privacy.lira import lira_scores
from bastion.attacks.privacy.references import ReferenceSpec, balanced_masks, train_references
from bastion.attacks.privacy.rmia import rmia_scores
from bastion.core.data import Dataset
from bastion.core.errors import AccessError, DataError, ParameterError
from bastion.core.registry import get
from bastion.core.results import Result, severity_rank
from bastion.core.target import FunctionTarget
from bastion.core.training import Trainer
from bastion.evaluation.metrics import roc_summary
from bastion.families import judged
from tests.privacy_fixtures import TRAINING, attack, digits_split, mlp, overfit_target, single_thread, tpr

LIRA = {"arch": mlp, "n_reference": 8, **TRAINING}
RMIA = {"arch": mlp, "n_reference": 2, **TRAINING}
LIRA4 = {**LIRA, "n_reference": 4}


# -- the overfit model leaks ---------------------------------------------------------------------------------
def test_lira_finds_the_leak_of_an_overfit_model():
    result, _ = attack("lira", **LIRA)
    rate, ci = tpr(result, 0.01)
    assert rate >= 0.05 and ci[0] > 0.01  # well above the 1% of a random guess
    assert result.metrics["auc"] > 0.6
    assert severity_rank(judged(result).findings[0].severity) >= severity_rank("medium")
    assert result.metrics["reference_train_accuracy"] == pytest.approx(1.0, abs=0.02)  # references overfit too
    assert result.queries == 600


def test_lira_beats_the_loss_attack_at_low_fpr():
    lira, _ = attack("lira", **LIRA)
    loss, _ = attack("loss")
    # with 300 non-members, TPR at 0.1% FPR is the TPR at zero false positives
    assert tpr(lira, 0.001)[0] >= tpr(loss, 0.001)[0] + 0.03
    assert tpr(lira, 0.01)[0] >= tpr(loss, 0.01)[0] + 0.03
    assert loss.metrics["threshold_attack"]["advantage"] > 0  # Yeom's threshold attack sees the gap


def test_offline_lira_leaks_too():
    offline, _ = attack("lira", mode="offline", **LIRA4)
    assert tpr(offline, 0.01)[0] > 0.02
    assert offline.metrics["mode"] == "offline" and offline.metrics["fixed_variance"] is True
    assert "reference_train_accuracy" not in offline.metrics  # offline: no reference model saw a candidate


def test_rmia_with_two_reference_models_finds_the_leak():
    result, _ = attack("rmia", **RMIA)
    rate, ci = tpr(result, 0.01)
    assert rate > 0.02 and ci[0] > 0.005
    assert result.metrics["n_population_z"] > 500


def test_shadow_model_attack_beats_chance():
    result, _ = attack("shadow", arch=mlp, n_reference=2, **TRAINING)
    assert result.metrics["auc_ci"][0] > 0.5
    assert result.metrics["attack_train_accuracy"] > 0.6


def test_label_only_attacks():
    gap, _ = attack("label-only", method="gap")
    assert gap.metrics["member_accuracy"] == 1.0 and gap.metrics["auc"] > 0.5
    boundary, _ = attack("label-only", n_directions=8, search_steps=8, iterations=5)
    assert boundary.metrics["auc"] > gap.metrics["auc"]  # distances separate correctly labelled records too
    assert boundary.queries > 600 * 50


def test_most_at_risk_records_are_members_with_top_scores():
    result, instance = attack("lira", **LIRA)
    scores_m, _ = instance.scores_
    top = result.metrics["most_at_risk"]
    assert len(top) == 10 and top[0]["score"] == pytest.approx(scores_m.max())
    assert [r["score"] for r in top] == sorted((r["score"] for r in top), reverse=True)


# -- nothing leaks where nothing can -------------------------------------------------------------------------
@pytest.mark.parametrize("name, params", [("loss", {}), ("lira", LIRA4), ("rmia", RMIA)])
def test_a_model_that_never_saw_the_members_stays_at_chance(name, params):
    result, _ = attack(name, model="null", **params)
    rate, ci = tpr(result, 0.01)
    assert rate <= 0.04 and ci[0] <= 0.01
    assert 0.42 < result.metrics["auc"] < 0.58
    assert judged(result).findings[0].severity in ("info", "low")


@pytest.mark.parametrize("name, params", [("loss", {}), ("lira", LIRA4)])
def test_a_dp_trained_model_stays_near_chance(name, params):
    result, _ = attack(name, model="dp", **params)
    rate, ci = tpr(result, 0.01)
    assert rate <= 0.04 and ci[0] <= 0.01
    assert result.metrics["auc"] < 0.6
    assert severity_rank(judged(result).findings[0].severity) <= severity_rank("low")


# -- intervals and reproducibility ---------------------------------------------------------------------------
def test_intervals_cover_the_estimates():
    for key in [("lira", LIRA), ("rmia", RMIA), ("loss", {})]:
        result, _ = attack(key[0], **key[1])
        low, high = result.metrics["auc_ci"]
        assert low <= result.metrics["auc"] <= high
        for row in result.metrics["tpr_at_fpr"]:
            assert row["ci"][0] <= row["tpr"] <= row["ci"][1]
        assert [row["fpr"] for row in result.metrics["tpr_at_fpr"]] == [0.0001, 0.001, 0.01]


def test_bootstrap_intervals_cover_the_true_tpr():
    """Members ~ N(1, 1), non-members ~ N(0, 1): the true TPR at 1% FPR is 1 - Phi(z_0.99 - 1)."""
    from scipy.stats import norm

    truth = float(norm.sf(norm.isf(0.01) - 1.0))
    covered = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        s = roc_summary(rng.normal(1, 1, 2000), rng.normal(0, 1, 2000), n_bootstrap=100, seed=seed)
        covered += s.tpr_at_fpr[0.01].low <= truth <= s.tpr_at_fpr[0.01].high
    assert covered >= 16


def test_results_reproduce_for_a_seed():
    first, _ = attack("rmia", **RMIA)
    members, nonmembers, population = digits_split()
    with single_thread():
        again = get("attacks", "rmia", "privacy")(**RMIA).run(overfit_target(), members=members,
                                                               nonmembers=nonmembers, population=population)
        other = get("attacks", "rmia", "privacy")(**{**RMIA, "seed": 1}).run(
            overfit_target(), members=members, nonmembers=nonmembers, population=population)
    assert again.metrics == first.metrics
    assert other.metrics["auc"] != first.metrics["auc"]


def test_parallel_training_matches_serial():
    members, _, _ = digits_split()
    spec = ReferenceSpec(10, Trainer(epochs=3, batch_size=64, device="cpu"), factory=mlp)
    masks = balanced_masks(len(members), 2, np.random.default_rng(0))
    serial = train_references(spec, members.x, members.y, masks, members.x[:50], seed=3, n_jobs=1)
    parallel = train_references(spec, members.x, members.y, masks, members.x[:50], seed=3, n_jobs=2)
    assert serial.shape == (2, 50, 10)
    torch.testing.assert_close(torch.from_numpy(serial), torch.from_numpy(parallel), rtol=1e-5, atol=1e-5)


def test_result_json_round_trip():
    result, _ = attack("lira", **LIRA)
    assert Result.from_json(result.to_json()).to_dict() == result.to_dict()


# -- scikit-learn targets ------------------------------------------------------------------------------------
def test_scikit_learn_target_references_are_clones():
    members, nonmembers, population = digits_split()
    forest = RandomForestClassifier(n_estimators=30, random_state=0).fit(members.x, members.y)
    target = FunctionTarget(forest.predict_proba, 10, (64,))
    target.estimator = forest
    result = get("attacks", "rmia", "privacy")().run(target, members=members, nonmembers=nonmembers,
                                                       population=population)
    assert tpr(result, 0.01)[0] > 0.1  # a fully grown forest memorises its training set
    assert result.metrics["reference_test_accuracy"] > 0.85


# -- building blocks -----------------------------------------------------------------------------------------
def test_logit_confidence_matches_its_definition():
    logits = torch.randn(5, 7, dtype=torch.float64)
    y = torch.tensor([0, 3, 6, 2, 2])
    p = logits.softmax(-1)[torch.arange(5), y]
    torch.testing.assert_close(logit_confidence(logits, y), (p / (1 - p)).log())
    torch.testing.assert_close(logit_confidence(logits.log_softmax(-1), y), (p / (1 - p)).log())


def test_balanced_masks_put_every_record_in_half_the_models():
    masks = balanced_masks(101, 8, np.random.default_rng(1))
    assert masks.shape == (8, 101) and (masks.sum(0) == 4).all()
    assert 30 < masks.sum(1).mean() < 70


def test_lira_scores_rank_in_distribution_records_higher():
    gen = torch.Generator().manual_seed(0)
    in_mask = torch.from_numpy(balanced_masks(200, 8, np.random.default_rng(0)))
    phi_ref = torch.randn(8, 200, generator=gen) + 3.0 * in_mask
    target_in = torch.randn(200, generator=gen) + 3.0
    target_out = torch.randn(200, generator=gen)
    for online in (True, False):
        for fixed in (True, False):
            s_in = lira_scores(target_in, phi_ref, in_mask, online, fixed_variance=fixed)
            s_out = lira_scores(target_out, phi_ref, in_mask, online, fixed_variance=fixed)
            assert s_in.mean() > s_out.mean() + 1.0


def test_rmia_scores_are_fractions_ordered_by_ratio():
    lx = np.array([-1.0, 0.0, 0.0001, 5.0])
    lz = np.linspace(-2, 2, 100)
    s = rmia_scores(lx, lz, gamma=1.0)
    assert (np.diff(s) > 0).all() and s.min() >= 0 and s.max() <= 1.0 + 1e-9
    assert s[-1] == pytest.approx(1.0, abs=0.01) and s[0] == pytest.approx(0.25, abs=0.02)


# -- errors a user can act on --------------------------------------------------------------------------------
def test_a_pytorch_target_needs_its_architecture():
    members, nonmembers, population = digits_split()
    with pytest.raises(ParameterError, match="--arch"):
        get("attacks", "lira", "privacy")().run(overfit_target(), members=members, nonmembers=nonmembers)


def test_missing_or_mismatched_data_is_a_clear_error():
    members, nonmembers, _ = digits_split()
    lira = get("attacks", "lira", "privacy")(arch=mlp)
    with pytest.raises(DataError, match="--nonmembers"):
        lira.run(overfit_target(), members=members)
    with pytest.raises(DataError):
        lira.run(overfit_target(), members=Dataset(np.zeros((10, 5)), np.zeros(10, int)), nonmembers=nonmembers)


def test_score_attacks_refuse_label_only_targets():
    members, nonmembers, _ = digits_split()
    with pytest.raises(AccessError):
        get("attacks", "loss", "privacy")().run(overfit_target().restrict("labels"), members=members,
                                                  nonmembers=nonmembers)


def test_population_is_split_from_non_members_when_missing():
    members, nonmembers, _ = digits_split()
    with single_thread():
        result = get("attacks", "rmia", "privacy")(arch=mlp, n_reference=1, epochs=5).run(
            overfit_target(), members=members, nonmembers=nonmembers)
    assert result.metrics["population_from_nonmembers"] is True
    assert result.metrics["n_nonmembers"] == 150


def test_one_dataset_is_split_three_ways():
    data = Dataset(np.arange(100, dtype=np.float32)[:, None], np.arange(100) % 2)
    members, nonmembers, population = split_dataset(data, seed=1)
    assert (len(members), len(nonmembers), len(population)) == (25, 25, 50)
    ids = np.concatenate([members.x, nonmembers.x, population.x]).ravel()
    assert sorted(ids.tolist()) == list(range(100))  # disjoint and complete
    with pytest.raises(ParameterError):
        split_dataset(members, 0.6, 0.5)


def test_bad_parameters_are_refused():
    with pytest.raises(ParameterError):
        get("attacks", "lira", "privacy")(mode="sideways")
    with pytest.raises(ParameterError, match="n_reference"):
        get("attacks", "lira", "privacy")(n_reference=2)
    with pytest.raises(ParameterError):
        get("attacks", "label-only", "privacy")(method="telepathy")


def test_attacks_are_registered_with_their_datasets():
    for name in ("loss", "shadow", "lira", "rmia", "label-only", "attribute"):
        cls = get("attacks", name, "privacy")
        assert cls.dataset_params == ("members", "nonmembers", "population")
    assert get("attacks", "inversion", "privacy").dataset_params == ("members",)
    assert isinstance(mlp(), nn.Module)
