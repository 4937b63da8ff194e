"""SPECTRE, Confusion Training, MM-BD and Activation Clustering's trusted-set test on a planted BadNets set
and on clean ones; usable screen output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bastion.core import registry
from bastion.core.errors import ParameterError
from bastion.defenses.detect.activation_clustering import ActivationClustering, trusted_share_test
from bastion.defenses.detect.confusion import ConfusionTraining
from bastion.defenses.detect.mm_bd import MMBD, null_tails, order_statistic_p_value
from bastion.defenses.detect.spectre import Spectre
from bastion.families import judged
from tests.poisoning_fixtures import badnets, clean_model, digits, single_thread, target_of


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def planted():
    attack, _, _ = badnets()  # 5% BadNets, target class 0, 55 poisoned of 1,100
    return target_of(attack.artifact_), attack.poisoned_.to_dataset(), attack.poisoned_.is_poison.numpy()


def test_spectre_finds_the_planted_poison():
    target, data, is_poison = planted()
    result = Spectre(ground_truth=is_poison).run(target, train_data=data)
    m = result.metrics
    assert m["tpr"] >= 0.9 and m["fpr"] <= 0.02 and m["auroc"] >= 0.98
    assert m["poisoned_classes"] == [0] and judged(result).findings[0].severity == "high"


def test_spectre_with_an_eps_bound_removes_the_papers_fraction():
    target, data, is_poison = planted()
    m = Spectre(eps=0.35, ground_truth=is_poison).run(target, data).metrics  # eps bounds a class's poison share
    assert m["n_flagged"] == sum(int(np.ceil(1.5 * 0.35 * n)) for n in np.bincount(data.y))
    assert m["tpr"] >= 0.9


def test_confusion_training_finds_the_planted_poison():
    target, data, is_poison = planted()
    _, clean, _ = digits()
    m = ConfusionTraining(ground_truth=is_poison).run(target, clean, train_data=data).metrics
    assert m["tpr"] >= 0.9 and m["fpr"] <= 0.02 and m["poisoned_classes"] == [0]
    with pytest.raises(ParameterError, match="--data"):
        ConfusionTraining().run(target, None, train_data=data)


def test_a_model_handed_over_frozen_is_retrained_all_the_same():
    import copy

    from bastion.attacks.backdoor.base import reset_copy

    frozen = copy.deepcopy(clean_model(0)).requires_grad_(False)  # as a scan that froze it leaves it
    fresh = reset_copy(frozen)
    assert all(p.requires_grad for p in fresh.parameters()) and not any(p.requires_grad for p in frozen.parameters())


@pytest.mark.parametrize("screen", [Spectre(), ConfusionTraining()], ids=["spectre", "confusion-training"])
def test_screens_flag_almost_nothing_on_a_clean_training_set(screen):
    train, clean, _ = digits()
    screen.ground_truth = np.zeros(len(train), bool)
    m = screen.run(target_of(clean_model(0)), clean, train_data=train).metrics
    assert m["fpr"] <= 0.02 and m["tpr"] == 0.0


def test_activation_clustering_default_names_only_the_target_with_a_clean_set():
    """The default decides with the defender's clean set: the poison cluster draws none of class 0's clean samples."""
    target, data, is_poison = planted()
    _, clean, _ = digits()
    m = ActivationClustering(ground_truth=is_poison).run(target, clean, train_data=data).metrics
    assert m["poisoned_classes"] == [0] and m["tpr"] >= 0.9 and m["fpr"] <= 0.02
    assert {c["decided_by"] for c in m["classes"]} == {"trusted"} and m["classes"][0]["p_value"] < 0.005
    for seed in (0, 1, 2):
        train, _, _ = digits()
        ok = ActivationClustering(ground_truth=np.zeros(len(train), bool)).run(target_of(clean_model(seed)), clean,
                                                                               train_data=train).metrics
        assert ok["poisoned_classes"] == [] and ok["fpr"] == 0.0


def test_activation_clustering_cannot_flag_a_class_without_clean_samples():
    target, data, is_poison = planted()
    _, clean, _ = digits()
    m = ActivationClustering(ground_truth=is_poison).run(target, clean.subset(np.nonzero(clean.y != 0)[0], "no 0"),
                                                         train_data=data).metrics
    assert 0 not in m["poisoned_classes"] and m["classes"][0]["trusted_n"] == 0
    assert trusted_share_test(0, 30, 0.3) < 1e-4 < 0.4 < trusted_share_test(9, 30, 0.3)


def test_mm_bd_flags_the_backdoor_target_and_no_clean_model():
    attack, _, _ = badnets()
    m = MMBD().run(target_of(attack.artifact_)).metrics
    assert m["flagged_classes"] == [0] and m["p_value"] < 0.05
    for seed in (0, 1, 2):
        clean = MMBD(seed=seed).run(target_of(clean_model(seed))).metrics
        assert clean["flagged_classes"] == [] and clean["p_value"] >= 0.05
        assert len(clean["max_margin"]) == 10


def test_mm_bd_null_gives_small_p_only_to_an_outlier():
    assert order_statistic_p_value(np.array([10.0, 11, 9, 10.5, 9.5, 10, 11, 9, 10, 40]))[1] < 0.01
    top, p_value = order_statistic_p_value(np.array([10.0, 11, 9, 10.5, 9.5, 10, 11, 9, 10, 11.5]))
    assert top == 9 and p_value > 0.05
    _, tails = null_tails(np.array([10.0, 11, 9, 10.5, 9.5, 10, 11, 9, 10, 40]))
    assert tails[9] < 1e-3 < tails.min(initial=1, where=np.arange(10) != 9) and np.all(np.diff(tails[[2, 0, 1]]) < 0)


def test_screen_cli_lists_suspects_and_writes_the_cleaned_set(tmp_path):
    from bastion.cli.main import app
    from bastion.core.data import save_npz
    from bastion.core.data_files import load_npz
    from bastion.models.export import save_model
    from bastion.models.metadata import ModelMetadata

    attack, _, _ = badnets()
    _, data, is_poison = planted()
    save_model(attack.artifact_, tmp_path / "model.pt", ModelMetadata(n_classes=10, input_shape=[1, 8, 8]))
    save_npz(data, tmp_path / "train.npz")
    np.savez(tmp_path / "truth.npz", is_poison=is_poison)
    out = CliRunner().invoke(app, ["defend", "spectre", str(tmp_path / "model.pt"), "--train-data",
                                   str(tmp_path / "train.npz"), "--ground-truth", str(tmp_path / "truth.npz"),
                                   "--out", str(tmp_path / "clean.npz"), "--device", "cpu", "--json"],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    m = json.loads(out.stdout)["metrics"]
    suspects = m["suspects"]
    assert len(suspects) == m["n_flagged"] > 0 and {"index", "score"} <= set(suspects[0])
    assert [s["score"] for s in suspects] == sorted((s["score"] for s in suspects), reverse=True)
    assert is_poison[[s["index"] for s in suspects]].mean() >= 0.9 and "auroc" in m
    cleaned = load_npz(tmp_path / "clean.npz")
    assert len(cleaned) == len(data) - m["n_flagged"] and m["saved_to"].endswith("clean.npz")
    kept = np.setdiff1d(np.arange(len(data)), [s["index"] for s in suspects])
    assert np.array_equal(cleaned.x, data.x[kept]) and np.array_equal(cleaned.y, data.y[kept])


def test_new_detectors_are_registered():
    for name, cls in (("spectre", Spectre), ("confusion-training", ConfusionTraining), ("mm-bd", MMBD)):
        assert registry.get("defenses", name) is cls
    with pytest.raises(ParameterError):
        Spectre(tail=0.7)
    with pytest.raises(ParameterError):
        MMBD(starts=0)


def test_tabor_names_the_planted_target_and_flags_no_class_of_a_clean_twin():
    from bastion.defenses.detect.tabor import TABOR, total_variation

    attack, _, _ = badnets()
    _, clean, _ = digits()
    backdoored = TABOR(steps=150).run(target_of(attack.artifact_), clean)
    assert backdoored.metrics["flagged_classes"] == [0] and judged(backdoored).findings[0].severity == "critical"
    twin = TABOR(steps=150).run(target_of(clean_model(0)), clean).metrics
    assert twin["flagged_classes"] == [] and min(twin["attack_success"]) >= 0.9
    square = np.zeros((1, 1, 4, 4), dtype=np.float32)
    square[..., 1:3, 1:3] = 1
    assert total_variation(torch.as_tensor(square)).tolist() == [8.0]
    with pytest.raises(ParameterError):
        TABOR(overlay_weight=-1)


def test_neural_cleanse_restarts_keep_each_class_smallest_working_mask():
    from bastion.defenses.detect.neural_cleanse import NeuralCleanse

    attack, _, _ = badnets()
    _, clean, _ = digits()
    one = NeuralCleanse(steps=30, seed=0).run(target_of(attack.artifact_), clean).metrics
    three = NeuralCleanse(steps=30, seed=0, restarts=2).run(target_of(attack.artifact_), clean).metrics
    for a, b, s in zip(one["mask_l1"], three["mask_l1"], three["attack_success"], strict=True):
        assert b <= a + 1e-4 or s >= 0.99  # the first restart is the single run; a class only trades up to success
    assert three["restarts"] == 2


def test_neural_cleanse_null_decision_sees_a_target_that_skewed_norms_hide_from_the_mad():
    from bastion.defenses.detect.features import anomaly_index
    from bastion.defenses.detect.neural_cleanse import NeuralCleanse, null_decision

    # mask norms measured on the Fashion-MNIST seed-3 BadNets CNN (target 3): three large masks widen the MAD
    norms = np.array([77.9, 146.9, 63.7, 11.0, 73.0, 72.9, 89.6, 150.7, 44.6, 159.9])
    assert anomaly_index(norms)[3] < 2
    flagged, top, p_value = null_decision(norms, 0.05)
    assert flagged == [3] and top == 3 and p_value < 1e-6
    even = np.array([10.0, 11.5, 9.5, 10.4, 12.0, 9.8, 10.9, 11.2, 10.1, 9.9])
    assert null_decision(even, 0.05)[0] == []
    attack, _, _ = badnets()
    _, clean, _ = digits()
    result = NeuralCleanse(steps=150, decision="null").run(target_of(attack.artifact_), clean)
    m = result.metrics
    assert m["flagged_classes"] == [0] and m["null_p_value"] < 0.05 and m["mad_flagged"] == [0]
    finding = judged(result).findings[0]
    assert finding.severity == "critical" and finding.metric == "null_p_value"
    with pytest.raises(ParameterError):
        NeuralCleanse(decision="vote")


def test_a_clean_verdict_of_a_trigger_scan_says_it_is_no_proof_and_what_it_cannot_see():
    from bastion.families.backdoor_verdicts import neural_cleanse_finding

    metrics = {"flagged_classes": [], "anomaly_index": [0.5, 1.0, 0.2], "mask_l1": [9.0, 10.0, 11.0],
               "threshold": 2.0, "decision": "null", "null_p_value": 0.4, "significance": 0.05}
    finding = neural_cleanse_finding("tabor", metrics)
    assert finding.severity == "info" and finding.metric == "null_p_value" and finding.value == 0.4
    assert "not proof" in finding.description and "warping" in finding.description
    assert "input-specific" in finding.description
    suspect = neural_cleanse_finding("neural-cleanse", {**metrics, "decision": "mad", "null_p_value": 0.01,
                                                        "null_top_class": 0})
    assert suspect.severity == "medium" and "class 0" in suspect.title
