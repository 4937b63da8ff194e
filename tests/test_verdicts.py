"""Issue 21 item 1: no false comfort — failed families are incomplete, verdict words follow their numbers,
black-box grades say they are upper bounds, and Bastion's own numerics are never held against the model."""

from __future__ import annotations

from bastion.assess.assessment import Assessment
from bastion.cli.assess import exit_code
from bastion.core.results import Finding, Result
from bastion.evaluation.privacy_verdicts import membership_findings
from bastion.families.base import FamilyReport, JobOutcome, judged
from bastion.families.defense_verdicts import gain_finding
from bastion.families.evasion import EvasionFamily, evasion_findings
from bastion.families.grading import BLACK_BOX_NOTE, INCOMPLETE, overall_grade
from bastion.families.inputs import ModelInfo
from bastion.families.privacy import PrivacyFamily
from bastion.families.sanity import sanity_finding


def info(white_box: bool) -> ModelInfo:
    return ModelInfo(path="m", format="onnx" if not white_box else "torchscript", sha256=None, n_classes=3,
                     input_shape=[4], bounds=[0.0, 1.0], access="gradients" if white_box else "scores",
                     white_box=white_box, estimator=False, device="cpu", name="m")


def loss_result(auc_ci: list[float]) -> Result:
    metrics = {"auc": sum(auc_ci) / 2, "auc_ci": auc_ci, "fpr_resolution": 0.001, "n_members": 500,
               "n_nonmembers": 500, "tpr_at_fpr": [{"fpr": 0.01, "tpr": 0.012, "ci": [0.004, 0.02]},
                                                   {"fpr": 0.001, "tpr": 0.0, "ci": [0.0, 0.004]}]}
    return Result(family="privacy", attack="loss", params={}, metrics=metrics,
                        findings=membership_findings("loss", metrics))


def test_a_family_with_a_failed_job_is_incomplete_and_fails_the_gate():
    outcomes = [JobOutcome("privacy/loss", "privacy", "loss", "done", result=loss_result([0.45, 0.55])),
                JobOutcome("privacy/lira", "privacy", "lira", "error",
                           error="RuntimeError: Unable to handle autograd's threading")]
    report = PrivacyFamily({"attacks": {}}, 0).report("assessed", outcomes, grade="A")
    assert report.status == "partial" and report.grade == INCOMPLETE
    assert "privacy/lira" in report.reason and "autograd" in report.reason
    assert overall_grade(["A", INCOMPLETE, "C"]) == INCOMPLETE and overall_grade(["A", "C", "N/A"]) == "C"
    a = Assessment(run_id="r", created="now", status="complete", families=[report], grade=INCOMPLETE)
    assert exit_code(a, "critical") == 1 and exit_code(a, None) == 0
    whole = PrivacyFamily({"attacks": {}}, 0).report("assessed", outcomes[:1], grade="A")
    assert whole.grade == "A" and whole.status == "assessed"


def test_leakage_whose_auc_interval_excludes_chance_is_reported_as_leakage():
    leaky = loss_result([0.52, 0.65]).findings[0]
    assert leaky.severity != "info" and "Membership leaks" in leaky.description
    assert "No membership leakage" not in leaky.description
    chance = loss_result([0.47, 0.56]).findings[0]
    assert chance.severity == "info" and "includes 0.5" in chance.description


def test_extraction_words_follow_the_fidelity():
    metrics = {"access": "scores", "prada": {}}
    words = {}
    for fidelity in (0.38, 0.6, 0.8, 0.97):
        row = {"budget": 100, "queries": 100, "fidelity": fidelity, "transfer_success": 0.1}
        result = Result(family="extraction", attack="copy", metrics={**metrics, "curve": [row]})
        words[fidelity] = judged(result).findings[0].description
    assert "most inputs" not in words[0.38] and "extraction failed" in words[0.38]
    assert "partial copy" in words[0.6] and "most inputs" in words[0.8] and "almost every" in words[0.97]


def test_a_certified_lower_bound_is_not_read_against_an_attacks_upper_bound():
    metrics = {"robust_accuracy_before": [{"eps": 0.5, "robust_accuracy": 0.40}],
               "robust_accuracy_after": [{"eps": 0.5, "robust_accuracy": 0.30}],
               "robust_accuracy_gain": [{"eps": 0.5, "gain": -0.10}], "clean_accuracy_cost": 0.02,
               "clean_accuracy_before": 0.9, "clean_accuracy_after": 0.88,
               "evaluation": {"after": "certificate", "attack": "auto"}}
    finding = gain_finding("smoothing (sigma=0.25)", metrics, "l2")
    assert "lower bound" in finding.title and "upper bound" in finding.title
    assert "inconclusive" in finding.description and "no meaningful robustness" not in finding.description
    assert finding.severity in ("info", "low")
    metrics["evaluation"]["after"] = "bpda+eot attack"  # like for like: a measured change
    assert "lower bound" not in gain_finding("smoothing", metrics, "l2").title


def test_bastions_own_numerics_are_never_a_finding_against_the_model():
    curve = [{"eps": 0.1, "robust_accuracy": 0.9}]
    findings = evasion_findings("square", "linf", 0.92, curve, violations=3)
    note = [f for f in findings if f.metric == "constraint_violations"]
    assert note and note[0].severity == "info" and note[0].evidence["about"] == "evaluation"
    assert all(f.severity == "info" for f in findings)  # 0.92 -> 0.9 is no weakness either
    from bastion.families.base import SanityCheck

    assert sanity_finding(SanityCheck("constraints", False, "invalid examples from square (3)")).severity == "info"
    assert sanity_finding(SanityCheck("monotone-in-eps", False, "rises")).severity == "medium"


def test_black_box_grades_carry_the_upper_bound_note():
    probe = EvasionFamily({"attacks": {}}, 0)
    black = probe.conclude(None, info(white_box=False), [])
    white = probe.conclude(None, info(white_box=True), [])
    assert isinstance(black, FamilyReport) and BLACK_BOX_NOTE in black.reason
    assert BLACK_BOX_NOTE not in white.reason


def test_finding_round_trip_keeps_the_evaluation_marker():
    note = evasion_findings("square", "linf", 0.9, [], violations=1)[0]
    assert Finding.from_dict(note.to_dict()).evidence["about"] == "evaluation"
