"""Neural Cleanse calibrated by a known-clean reference model of the same task: a planted target stays flagged
(its trigger is far smaller than the same class's on the reference), a small trigger the reference shares is
explained away (a natural feature of the task: a medium suspect, not a flag), and a reference that is not a model
of the same task, or cannot give gradients, is refused with one clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bastion.core.errors import AccessError, ParameterError
from bastion.core.target import FunctionTarget, TorchTarget
from bastion.defenses.detect.neural_cleanse import NeuralCleanse
from bastion.families.backdoor_verdicts import neural_cleanse_finding
from tests.poisoning_fixtures import ARCH, badnets, clean_model, digits, single_thread, target_of

STEPS = 150


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def backdoored_scan() -> dict:
    """The BadNets model (target 0) scanned with a clean model of another seed as its reference."""
    attack, _, _ = badnets()
    _, clean, _ = digits()
    return NeuralCleanse(steps=STEPS, reference=target_of(clean_model(1))).run(target_of(attack.artifact_),
                                                                                clean).metrics


def test_a_planted_target_stays_flagged_against_a_clean_reference(backdoored_scan):
    m = backdoored_scan
    assert m["flagged_classes"] == [0] and m["explained_classes"] == []
    ratio = np.array(m["reference_ratio"])
    assert ratio[0] == ratio.min() and ratio[0] < 0.5 * np.median(ratio)  # far smaller than on the clean model
    assert m["reference_p_value"] < m["significance"] and len(m["reference_mask_l1"]) == 10
    finding = neural_cleanse_finding("neural-cleanse", m)
    assert finding.severity == "critical" and "smaller than on the clean reference" in finding.title


def test_a_small_trigger_the_reference_shares_is_explained_not_flagged():
    # the reference carries the same planted trigger: relative to it, class 0 is not small (this is why the
    # reference must be one the user vouches for; the verdict says so)
    attack, _, _ = badnets()
    _, clean, _ = digits()
    suspect = target_of(attack.artifact_)
    m = NeuralCleanse(steps=STEPS, reference=[suspect]).run(suspect, clean).metrics
    assert m["null_top_class"] == 0 and m["null_p_value"] < m["significance"]  # the null on the norms flags it
    assert m["flagged_classes"] == [] and m["explained_classes"] == [0]
    assert np.allclose(m["reference_ratio"], 1.0)
    finding = neural_cleanse_finding("neural-cleanse", m)
    assert finding.severity == "medium" and "natural feature of the task" in finding.title


def test_a_reference_of_another_task_or_without_gradients_is_refused():
    attack, _, _ = badnets()
    _, clean, _ = digits()
    suspect = target_of(attack.artifact_)
    other_task = TorchTarget(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)), (1, 8, 8), n_classes=3,
                             device="cpu")
    with pytest.raises(ParameterError, match="same task"):
        NeuralCleanse(steps=5, reference=other_task).run(suspect, clean)
    scores_only = FunctionTarget(lambda x: np.full((len(x), 10), 0.1), 10, (1, 8, 8))
    with pytest.raises(AccessError, match="reference"):
        NeuralCleanse(steps=5, reference=scores_only).run(suspect, clean)
    three = TorchTarget(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)), (1, 8, 8), n_classes=3,
                        device="cpu")
    few = clean.subset(np.flatnonzero(clean.y < 3))
    with pytest.raises(ParameterError, match="at least 4 classes"):
        NeuralCleanse(steps=5, reference=three).run(three, few)


def test_cli_reads_reference_files_through_the_sandbox(tmp_path, capsys):
    from bastion.cli.main import run as cli
    from bastion.core.data import save_npz
    from bastion.models.export import save_model
    from bastion.models.metadata import ModelMetadata

    attack, _, _ = badnets()
    _, clean, _ = digits()
    meta = ModelMetadata(n_classes=10, input_shape=[1, 8, 8])
    save_model(attack.artifact_, tmp_path / "suspect.safetensors", meta)
    for seed in (1, 2):
        save_model(clean_model(seed), tmp_path / f"clean{seed}.safetensors", meta)
    save_npz(clean, tmp_path / "clean.npz")
    args = ["defend", "neural-cleanse", str(tmp_path / "suspect.safetensors"), "--arch", ARCH, "--data",
            str(tmp_path / "clean.npz"), "--device", "cpu", "--steps", str(STEPS), "--json"]

    def bastion(*extra: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as done:
            cli([*args, *extra])
        out = capsys.readouterr()
        return done.value.code, out.out, out.err

    code, out, _ = bastion("--reference", f"{tmp_path / 'clean1.safetensors'},{tmp_path / 'clean2.safetensors'}",
                           "--fail-on", "never")
    m = json.loads(out)["metrics"]
    assert code == 0 and m["flagged_classes"] == [0] and len(m["reference_models"]) == 2
    code, _, err = bastion("--reference", str(tmp_path / "clean.npz"))
    assert code == 2 and "unknown model format" in err and err.count("\n") == 1


def test_assess_plan_reference_reaches_the_sandboxed_scan(tmp_path, monkeypatch):
    """A plan's `reference` (relative to the user's folder) is mounted for, and read by, the sandboxed worker."""
    from bastion.cli.main import run as cli
    from bastion.core.data import save_npz
    from bastion.models.export import save_model
    from bastion.models.metadata import ModelMetadata

    attack, _, _ = badnets()
    _, clean, _ = digits()
    meta = ModelMetadata(n_classes=10, input_shape=[1, 8, 8], bounds=[0.0, 1.0])
    save_model(attack.artifact_, tmp_path / "suspect.safetensors", meta)
    save_model(clean_model(1), tmp_path / "clean1.safetensors", meta)
    save_npz(clean, tmp_path / "clean.npz")
    off = "".join(f"  {f}: {{enabled: false}}\n" for f in ("evasion", "extraction", "privacy", "supply_chain",
                                                           "availability"))
    (tmp_path / "plan.yaml").write_text(
        f"families:\n{off}  backdoor:\n    scanners:\n      neural-cleanse: {{steps: {STEPS}, reference: "
        "clean1.safetensors}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        cli(["assess", "suspect.safetensors", "--arch", ARCH, "--data", "clean.npz", "--plan", "plan.yaml", "--out",
             "report", "--format", "json", "--no-store", "--quiet", "--device", "cpu", "--fail-on", "never"])
    assert done.value.code == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    backdoor = next(f for f in report["families"] if f["family"] == "backdoor")
    worst = backdoor["findings"][0]
    assert worst["severity"] == "critical" and "smaller than on the clean reference" in worst["title"]
    assert worst["evidence"]["reference_models"] and len(worst["evidence"]["reference_ratio"]) == 10


def test_the_report_draws_the_reference_sizes(backdoored_scan):
    from bastion.report.plots import trigger_sizes

    plot = trigger_sizes(backdoored_scan)
    assert "clean reference" in plot.caption and f"class {backdoored_scan['reference_top_class']}" in plot.caption
    assert plot.uri and "Black ticks" not in trigger_sizes({**backdoored_scan, "reference_mask_l1": None}).caption


def test_unflagged_classes_small_against_the_reference_or_the_model_stay_medium_suspects():
    # the bag explains the smallest trigger, but class 0 shrank 6x against the reference: a hidden target looks so
    metrics = {"flagged_classes": [], "decision": "null", "null_p_value": 1e-4, "null_top_class": 8,
               "significance": 0.05, "anomaly_index": [0.0] * 10, "mask_l1": [20.0] + [100.0] * 7 + [15.0, 100.0],
               "threshold": 2.0, "explained_classes": [8], "reference_flagged": [0], "reference_p_value": 1e-3,
               "reference_ratio": [1 / 6] + [1.0] * 9, "reference_models": ["ref.pt2"]}
    finding = neural_cleanse_finding("neural-cleanse", metrics)
    assert finding.severity == "medium" and "6.0× smaller than on the clean reference" in finding.title
    explained = neural_cleanse_finding("neural-cleanse", {**metrics, "reference_flagged": []})
    assert explained.severity == "medium" and "class(es) 8" in explained.title and "not abnormally" in explained.title
