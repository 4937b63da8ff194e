"""Issue 20: inside `bastion assess` the backdoor family gives the training-data screens --data as the defender's
trusted clean set, so Activation Clustering decides with its clean-set test there as it does in `bastion defend`."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.families.backdoor import BackdoorFamily
from bastion.families.inputs import Inputs
from bastion.models.export import save_model
from bastion.models.metadata import ModelMetadata
from tests.poisoning_fixtures import ARCH, SHAPE, badnets, digits, single_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def poisoned_inputs(tmp_path_factory):
    """The 5% BadNets digits CNN (target 0) as a file, its poisoned training set and the held-out test set."""
    attack, _, _ = badnets()
    _, _, test = digits()
    path = save_model(attack.artifact_, tmp_path_factory.mktemp("bd") / "badnets.safetensors",
                      ModelMetadata(n_classes=10, input_shape=list(SHAPE), bounds=[0.0, 1.0]))
    inputs = Inputs(model=str(path), data=test, train_data=attack.poisoned_.to_dataset(), arch=ARCH, device="cpu")
    return inputs, attack.poisoned_.is_poison.numpy()


def run_family(inputs: Inputs, section: dict):
    family = BackdoorFamily({"enabled": True, "n_samples": 50, **section}, seed=0)
    jobs = family.jobs(inputs, inputs.describe())
    return jobs, [family.run_job(inputs, job) for job in jobs], family


def caught(metrics: dict, is_poison: np.ndarray) -> tuple[float, float]:
    """TPR and FPR of the suspects a screen lists (indices into --train-data)."""
    flagged = np.zeros(len(is_poison), bool)
    flagged[[s["index"] for s in metrics["suspects"]]] = True
    return float(flagged[is_poison].mean()), float(flagged[~is_poison].mean())


def test_assess_activation_clustering_decides_with_the_evaluation_set(poisoned_inputs):
    inputs, is_poison = poisoned_inputs
    jobs, results, family = run_family(inputs, {"scanners": {"activation-clustering": {}}})
    assert jobs[0].data == {"data": ["data", None], "train_data": ["train", None]}
    m = results[0].metrics
    assert {c["decided_by"] for c in m["classes"]} == {"trusted"}  # the clean-set rule, not reclassification
    assert sum(c["trusted_n"] for c in m["classes"]) == len(inputs.data)
    assert m["poisoned_classes"] == [0] and m["classes"][0]["p_value"] < 0.005  # the target, no clean class
    tpr, fpr = caught(m, is_poison)
    assert tpr >= 0.9 and fpr <= 0.02
    findings = family.judge(results)
    assert findings[0].severity == "high" and findings[0].evidence["poisoned_classes"] == [0]


def test_assess_spectre_screens_the_training_set(poisoned_inputs):
    """Every training-data screen, not only the two named before, screens --train-data (SPECTRE screened the
    clean --data in assess)."""
    inputs, is_poison = poisoned_inputs
    jobs, results, _ = run_family(inputs, {"scanners": {"spectre": {}}})
    assert jobs[0].data["train_data"] == ["train", None]
    tpr, fpr = caught(results[0].metrics, is_poison)
    assert results[0].metrics["poisoned_classes"] == [0] and tpr >= 0.9 and fpr <= 0.02
