"""The trigger-region confirmation: a planted BadNets target's own inputs keep their label when its restored
trigger's region is filled from other classes, a class whose own evidence is that region loses it; as Neural
Cleanse's confirmation an unconfirmed flag becomes a medium suspect. (The clean unit-test CNNs' smallest-trigger
classes keep 0.51-0.66, above 1/2, at null p-values 0.07-0.44 that flag nothing: the test is weak on them.)"""

from __future__ import annotations

import math

import pytest
import torch

from bastion.core.errors import ParameterError
from bastion.defenses.detect.neural_cleanse import NeuralCleanse, confirmed
from bastion.defenses.detect.trigger_region import region_keep
from bastion.families.backdoor_verdicts import neural_cleanse_finding
from tests.poisoning_fixtures import badnets, digits, single_thread, target_of


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def test_a_planted_target_keeps_its_label_without_its_trigger_region_and_a_clean_class_does_not():
    _, clean, _ = digits()
    attack, _, _ = badnets()  # 5% BadNets, target class 0
    backdoored = target_of(attack.artifact_)
    scan = NeuralCleanse(steps=150, decision="null", confirm="region")
    m = scan.run(backdoored, clean).metrics
    assert m["flagged_classes"] == [0] and m["region_keep"]["0"] > 0.5 and m["unconfirmed_classes"] == []


def test_a_class_whose_evidence_is_the_trigger_region_is_not_confirmed_and_a_shortcut_target_is():
    # three classes, each decided by its own input feature; feature 3 is a shortcut to class 0 (a backdoor)
    weights = torch.zeros(3, 4)
    weights[0, 0], weights[1, 1], weights[2, 2], weights[0, 3] = 10.0, 10.0, 10.0, 20.0
    model = torch.nn.Linear(4, 3).eval()
    model.weight.data, model.bias.data = weights, torch.tensor([0.0, 0.0, 1.0])  # no evidence at all: class 2
    y = torch.arange(3).repeat(20)
    x = torch.nn.functional.one_hot(y, 4).float()
    natural, shortcut = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 0, 0, 1.0])
    assert region_keep(model, x, y, 0, natural) == 0.0  # class 0's own evidence replaced: every label lost
    assert region_keep(model, x, y, 0, shortcut) == 1.0  # class 0's inputs never carried the shortcut
    assert not confirmed(0, None, {0: region_keep(model, x, y, 0, natural)})


def test_an_untestable_class_stays_flagged_and_an_empty_mask_keeps_every_label():
    model = torch.nn.Linear(4, 3).eval()
    model.weight.data, model.bias.data = torch.eye(3, 4), torch.zeros(3)
    y = torch.arange(3).repeat(10)
    x = torch.nn.functional.one_hot(y, 4).float() + 0.1 * torch.rand(30, 4, generator=torch.Generator().manual_seed(0))
    assert region_keep(model, x, y, int(y[0]), torch.zeros(4)) == 1.0  # nothing replaced: every label kept
    assert math.isnan(region_keep(model, x, y, 7, torch.ones(4)))  # no input of class 7: untestable
    assert confirmed(1, None, {1: float("nan")}) and not confirmed(1, None, {1: 0.5}) and confirmed(1, None, None)
    with pytest.raises(ParameterError):
        NeuralCleanse(confirm="vote")


def test_region_verdicts_say_what_was_measured():
    base = {"anomaly_index": [4.0, 0.5, 0.3], "mask_l1": [3.0, 10.0, 11.0], "threshold": 2.0, "decision": "null",
            "null_p_value": 0.001, "significance": 0.05, "region_threshold": 0.5}
    critical = neural_cleanse_finding("neural-cleanse", {**base, "flagged_classes": [0], "region_keep": {"0": 0.97},
                                                         "unconfirmed_classes": []})
    assert critical.severity == "critical" and "97% > 1/2" in critical.title
    suspect = neural_cleanse_finding("neural-cleanse", {**base, "flagged_classes": [], "region_keep": {"0": 0.2},
                                                        "unconfirmed_classes": [0]})
    assert suspect.severity == "medium" and suspect.metric == "region_keep" and "20%" in suspect.title
    assert "not an all-clear" in suspect.description


def test_the_default_decides_by_the_null_confirmed_by_the_region_and_by_the_mad_under_four_classes():
    assert NeuralCleanse().get_params()["decision"] == "null" and NeuralCleanse().get_params()["confirm"] == "region"
    from bastion.core.data import Dataset
    from bastion.core.target import TorchTarget

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(30, 4, generator=gen)
    data = Dataset(x.numpy(), model(x).argmax(-1).detach().numpy(), "three-classes")
    m = NeuralCleanse(steps=5).run(TorchTarget(model, (4,), n_classes=3, device="cpu"), data).metrics
    assert m["decision"] == "mad" and m["null_p_value"] == 1.0  # three classes: too few for the null


def test_the_report_draws_trigger_sizes_under_the_null_decision():
    from bastion.report.plots import trigger_sizes

    plot = trigger_sizes({"mask_l1": [3.0, 10.0, 11.0, 12.0], "flagged_classes": [], "unconfirmed_classes": [0],
                          "null_top_class": 0, "null_p_value": 2e-4, "significance": 0.05})
    assert plot.id == "anomaly-index" and "class 0, p = 0.0002" in plot.caption and plot.uri
