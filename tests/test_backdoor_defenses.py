"""Backdoor defenses: data screening (AC, Spectral), model scanning (Neural Cleanse), STRIP, and repair."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bastion.core import registry
from bastion.core.errors import AccessError, ParameterError
from bastion.core.target import FunctionTarget, TorchTarget
from bastion.defenses.base import Defense
from bastion.defenses.detect.activation_clustering import ActivationClustering
from bastion.defenses.detect.features import anomaly_index, feature_layer
from bastion.defenses.detect.neural_cleanse import NeuralCleanse
from bastion.defenses.detect.spectral import SpectralSignatures
from bastion.defenses.detect.strip import STRIP
from bastion.defenses.repair.fine_prune import FinePrune, prunable_layer
from bastion.defenses.repair.fine_tune import FineTune
from bastion.demo.models import digits_cnn, tabular_mlp
from bastion.families import judged
from tests.poisoning_fixtures import ARCH, badnets, clean_model, digits, single_thread, target_of


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield

NC_STEPS = 150  # fewer than the default 300: enough on 8x8 digits, keeps the suite fast


def poisoned_inputs():
    attack, _, _ = badnets()
    return target_of(attack.artifact_), attack.poisoned_.to_dataset(), attack.poisoned_.is_poison.numpy()


def test_activation_clustering_finds_the_poison():
    target, data, is_poison = poisoned_inputs()
    result = ActivationClustering(ground_truth=is_poison).run(target, train_data=data)
    m = result.metrics
    assert m["tpr"] >= 0.8 and m["fpr"] <= 0.1
    assert 0 in m["poisoned_classes"] and m["auroc"] > 0.8
    assert result.family == "backdoor" and result.attack == "activation-clustering"
    assert judged(result).findings[0].severity == "high"


def test_spectral_signatures_rank_the_poison_first():
    target, data, is_poison = poisoned_inputs()
    m = SpectralSignatures(eps=0.05, ground_truth=is_poison).run(target, data).metrics
    per_class = np.bincount(data.y)
    assert m["n_flagged"] == sum(int(np.ceil(1.5 * 0.05 * n)) for n in per_class)
    assert m["auroc"] >= 0.8 and m["tpr"] > 0.0
    assert m["tpr_at_fpr"]["fpr"] == 0.1 and m["tpr_at_fpr"]["tpr"] >= 0.5


def test_screening_a_clean_training_set_flags_little():
    train, _, _ = digits()
    m = ActivationClustering(ground_truth=np.zeros(len(train), bool)).run(target_of(clean_model(0)), train).metrics
    assert m["fpr"] <= 0.1 and m["tpr"] == 0.0 and "auroc" not in m


def test_ground_truth_is_read_from_an_npz_and_checked(tmp_path):
    target, data, is_poison = poisoned_inputs()
    path = tmp_path / "truth.npz"
    np.savez(path, x=data.x, y=data.y, is_poison=is_poison)
    m = SpectralSignatures(ground_truth=str(path)).run(target, data).metrics
    assert m["n_poison"] == int(is_poison.sum())
    with pytest.raises(Exception, match="entries"):
        SpectralSignatures(ground_truth=is_poison[:10]).run(target, data)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neural_cleanse_flags_no_class_of_clean_models(seed):
    _, clean, _ = digits()
    m = NeuralCleanse(steps=NC_STEPS, seed=seed).run(target_of(clean_model(seed)), clean).metrics
    assert m["flagged_classes"] == []
    norms, index = np.array(m["mask_l1"]), np.array(m["anomaly_index"])
    assert (index[norms < np.median(norms)] <= 2).all() and min(m["attack_success"]) >= 0.9


def test_neural_cleanse_cli_flags_the_backdoor_target(tmp_path):
    from bastion.cli.main import app
    from bastion.core.data import save_npz
    from bastion.models.export import save_model
    from bastion.models.metadata import ModelMetadata

    attack, _, _ = badnets()
    _, clean, _ = digits()
    save_model(attack.artifact_, tmp_path / "model.safetensors", ModelMetadata(n_classes=10, input_shape=[1, 8, 8]))
    save_npz(clean, tmp_path / "clean.npz")
    out = CliRunner().invoke(app, ["defend", "neural-cleanse", str(tmp_path / "model.safetensors"), "--arch", ARCH,
                                   "--data", str(tmp_path / "clean.npz"), "--device", "cpu", "--steps",
                                   str(NC_STEPS), "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["family"] == "backdoor" and result["attack"] == "neural-cleanse"
    assert 0 in result["metrics"]["flagged_classes"] and result["metrics"]["anomaly_index"][0] > 2
    assert len(result["metrics"]["anomaly_index"]) == 10
    assert result["findings"][0]["severity"] == "critical"


def test_strip_catches_triggered_inputs_at_one_percent_false_rejection():
    attack, _, triggered = badnets()
    _, clean, test = digits()
    target = target_of(attack.artifact_)
    m = STRIP(frr=0.01).run(target, clean, suspect=triggered).metrics
    assert m["detection_rate"] >= 0.9 and m["frr"] <= 0.05 and m["auroc"] >= 0.95
    benign = STRIP(frr=0.01).run(target, clean, suspect=test).metrics
    assert benign["detection_rate"] <= 0.1


def test_strip_works_on_a_score_only_black_box():
    attack, _, triggered = badnets()
    _, clean, _ = digits()
    model = attack.artifact_

    def scores(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(x)).softmax(-1).numpy()

    black_box = FunctionTarget(scores, 10, (1, 8, 8))
    m = STRIP(n_overlays=10).run(black_box, clean, suspect=triggered.subset(slice(0, 50))).metrics
    assert m["detection_rate"] >= 0.9
    with pytest.raises(AccessError):
        NeuralCleanse().run(black_box, clean)


@pytest.mark.parametrize("defense", [FineTune(epochs=20, lr=1e-2), FinePrune(epochs=20, lr=1e-2)],
                         ids=["fine-tune", "fine-prune"])
def test_repair_removes_the_backdoor_and_keeps_accuracy(defense):
    attack, _, triggered = badnets()
    _, clean, test = digits()
    before = [p.detach().clone() for p in attack.artifact_.parameters()]
    result = defense.run(target_of(attack.artifact_), test, train_data=clean, triggered=triggered)
    m = result.metrics
    assert m["before"]["attack_success_rate"] >= 0.9
    assert m["after"]["attack_success_rate"] < 0.2
    assert m["after"]["clean_accuracy"] >= m["before"]["clean_accuracy"] - 0.03
    assert m["der"] > 0.85
    assert all(torch.equal(a, b) for a, b in zip(before, attack.artifact_.parameters(), strict=True))
    assert defense.artifact_ is not attack.artifact_


def test_fine_prune_masks_dormant_channels_for_good():
    attack, _, _ = badnets()
    _, clean, _ = digits()
    defense = FinePrune(epochs=1)
    m = defense.run(target_of(attack.artifact_), clean).metrics
    assert m["layer"] == "2" and m["channels"] == 32 and m["pruned_channels"] > 0
    weight = defense.artifact_[2].weight
    assert int((weight.flatten(1).abs().sum(1) == 0).sum()) >= m["pruned_channels"]
    assert "der" not in m and 0 < m["n_test"] < len(clean)


def test_layer_choice_and_anomaly_index():
    cnn, mlp = digits_cnn(), tabular_mlp(30, 2)
    assert feature_layer(cnn) == ("6", True)  # the CNN's feature vector: input of the first linear layer
    assert feature_layer(mlp) == ("5", True)  # the MLP's last hidden layer
    assert prunable_layer(cnn)[0] == "2" and prunable_layer(mlp)[0] == "3"
    index = anomaly_index(np.array([10.0, 11.0, 9.0, 10.0, 2.0]))
    assert index[4] == pytest.approx(8.0 / 1.4826) and index[0] == 0.0
    with pytest.raises(ParameterError):
        feature_layer(cnn, "nope")


def test_defense_contract_and_registry():
    for name, cls in (("neural-cleanse", NeuralCleanse), ("strip", STRIP), ("spectral", SpectralSignatures),
                      ("activation-clustering", ActivationClustering), ("fine-prune", FinePrune),
                      ("fine-tune", FineTune)):
        assert registry.get("defenses", name) is cls and issubclass(cls, Defense)
    assert NeuralCleanse(steps=5).get_params()["steps"] == 5
    assert "NeuralCleanse(steps=5" in repr(NeuralCleanse(steps=5))
    with pytest.raises(ParameterError):
        NeuralCleanse(cost_multiplier=1.0)
    with pytest.raises(ParameterError, match="--data"):
        NeuralCleanse().run(target_of(digits_cnn()))
    with pytest.raises(ParameterError):
        STRIP(frr=0.7)


def test_neural_cleanse_handles_flat_tabular_inputs():
    from bastion.core.data import Dataset

    x = np.random.default_rng(0).random((40, 30)).astype(np.float32)
    target = TorchTarget(tabular_mlp(30, 3), (30,), device="cpu")
    defense = NeuralCleanse(steps=5, class_batch=2)
    m = defense.run(target, Dataset(x, np.arange(40) % 3)).metrics
    assert len(m["anomaly_index"]) == 3 and defense.masks_.shape == (3, 30) and defense.patterns_.shape == (3, 30)
    assert ((defense.masks_ >= 0) & (defense.masks_ <= 1)).all()


def test_neural_cleanse_index_is_the_papers_mad_of_mask_norms_or_their_logs():
    from bastion.core.data import Dataset

    x = np.random.default_rng(1).random((40, 30)).astype(np.float32)
    target, data = TorchTarget(tabular_mlp(30, 5), (30,), device="cpu"), Dataset(x, np.arange(40) % 5)
    for scale in ("norm", "log"):
        m = NeuralCleanse(steps=5, scale=scale).run(target, data).metrics
        norms = np.array(m["mask_l1"])
        expected = anomaly_index(norms if scale == "norm" else np.log(norms))
        assert m["scale"] == scale and np.allclose(m["anomaly_index"], expected)
        assert len(m["attack_success"]) == 5  # every class says whether its trigger optimisation converged
    with pytest.raises(ParameterError, match="scale"):
        NeuralCleanse(scale="sqrt")
