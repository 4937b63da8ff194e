"""The runner and probes: every family yields graded, mapped findings; sanity checks; resume after interruption."""

from __future__ import annotations

import pytest

from bastion.assess.runner import LocalBackend, Runner, plan_jobs
from bastion.core.results import Finding, severity_rank
from bastion.families.base import FamilyReport, JobOutcome, SanityCheck
from bastion.families.grading import GRADES, finding_key, grade_of, overall_grade
from bastion.families.sanity import (
    check_black_box,
    check_convergence,
    check_iterative,
    check_large_eps,
    check_monotone,
    check_violations,
)
from bastion.store import RunStore

from .assess_fixtures import cancer_inputs, quick_assessment, quick_plan  # noqa: F401


def test_every_family_is_assessed_with_mapped_findings(quick_assessment):  # noqa: F811
    a, _ = quick_assessment
    assert [f.family for f in a.families] == ["evasion", "privacy", "extraction", "backdoor", "supply_chain",
                                                "llm", "availability"]
    assert a.family("llm").status == "skipped" and a.family("llm").reason == "not applicable: not a language model"
    for fam in a.families:
        if fam.family == "llm":
            continue
        assert fam.status == "assessed", (fam.family, fam.reason, fam.errors)
        assert fam.results, fam.family
        assert fam.grade == grade_of(fam.findings)
        for f in fam.findings:
            if severity_rank(f.severity) > 0:
                assert f.atlas and all(t.startswith("AML.T") for t in f.atlas), f
                assert f.owasp and all(t.startswith("ML") for t in f.owasp), f
    assert a.grade == overall_grade(f.grade for f in a.families)
    assert a.complete
    # the undefended MLP is copied almost perfectly and evaded: those families cannot grade A
    assert a.family("extraction").grade != "A" and a.family("evasion").grade != "A"


def test_evasion_shards_merge_into_one_curve_per_attack(quick_assessment):  # noqa: F811
    a, _ = quick_assessment
    ev = a.family("evasion")
    assert sorted(r.attack for r in ev.results) == ["fgsm", "pgd"]
    for r in ev.results:
        assert r.metrics["n_samples"] == 60 and r.metrics["shards"] == 2
        accs = [p["robust_accuracy"] for p in r.metrics["robust_accuracy"]]
        assert all(0.0 <= v <= r.metrics["clean_accuracy"] + 1e-9 for v in accs)
    names = {c.name for c in ev.sanity}
    assert {"constraints", "monotone-in-eps", "converged", "large-eps-reaches-chance"} <= names
    assert sum(n.startswith("sanity-setup: ") for n in names) == 3  # checks 1-3 on the target itself
    assert any(k.startswith("robust_accuracy@l2=") for k in ev.headline)


def test_privacy_keeps_a_roc_curve_and_low_fpr_metrics(quick_assessment):  # noqa: F811
    a, _ = quick_assessment
    priv = a.family("privacy")
    for r in priv.results:
        roc = r.metrics["roc_curve"]
        assert len(roc["fpr"]) == len(roc["tpr"]) > 5
        assert roc["tpr"] == sorted(roc["tpr"])
    assert "lira.tpr@1.00%fpr" in priv.headline


def test_skipped_families_say_why(cancer_inputs, quick_plan):  # noqa: F811
    no_train = type(cancer_inputs)(model=cancer_inputs.model, data=cancer_inputs.data, device="cpu")
    plan = quick_plan.merged({"families": {"evasion": False, "extraction": False, "backdoor": False,
                                           "supply_chain": False, "availability": False}})
    a = Runner(show_progress=False).run(no_train, plan)
    priv = a.family("privacy")
    assert priv.status == "skipped" and "--train-data" in priv.reason and priv.grade == "N/A"
    assert a.family("evasion").reason == "disabled in the plan"
    assert a.grade == "N/A"


class Interrupting(LocalBackend):
    """Stops (like Ctrl-C) after `after` jobs."""

    def __init__(self, after: int):
        self.after = after

    def run(self, inputs, jobs, plan, on_done):
        for i, job in enumerate(jobs):
            if i == self.after:
                raise KeyboardInterrupt
            super().run(inputs, [job], plan, on_done)


def test_interrupted_run_keeps_finished_jobs_and_resumes(cancer_inputs, quick_plan, tmp_path):  # noqa: F811
    # availability measures time: its figures are not a pure function of the seed, so it sits this comparison out
    plan = quick_plan.merged({"families": {"privacy": False, "availability": False}})
    store = RunStore(tmp_path / "runs.sqlite")
    with pytest.raises(KeyboardInterrupt):
        Runner(store, Interrupting(3), show_progress=False).run(cancer_inputs, plan, run_id="r1")
    assert store.run("r1")["status"] == "interrupted"
    kept = store.outcomes("r1", JobOutcome.from_json)
    assert len(kept) == 3
    ran = []

    class Counting(LocalBackend):
        def run(self, inputs, jobs, plan, on_done):
            ran.extend(j.key for j in jobs)
            super().run(inputs, jobs, plan, on_done)

    resumed = Runner(store, Counting(), show_progress=False).run(cancer_inputs, plan, run_id="r1", resume=True)
    _, _, jobs = plan_jobs(cancer_inputs, cancer_inputs.describe(), plan)
    assert set(ran) == {j.key for j in jobs} - set(kept)
    assert store.run("r1")["status"] == "complete" and resumed.complete
    fresh = Runner(show_progress=False).run(cancer_inputs, plan)
    key = lambda a: sorted((f.family, finding_key(f.family, x), x.severity, x.title)  # noqa: E731
                           for f in a.families for x in f.findings)
    assert key(resumed) == key(fresh)


def test_a_failing_job_is_recorded_not_fatal(cancer_inputs, quick_plan):  # noqa: F811
    plan = quick_plan.merged({"families": {"privacy": False, "extraction": False, "backdoor": False,
                                           "supply_chain": False,
                                           "evasion": {"attacks": {"pgd": {"steps": 2}}, "sanity": False}}})
    from bastion.families import evasion as evasion_probe

    original = evasion_probe.EvasionFamily.execute

    def broken(self, inputs, job):
        if job.key.endswith("/1"):
            raise RuntimeError("boom")
        return original(self, inputs, job)

    evasion_probe.EvasionFamily.execute = broken
    try:
        a = Runner(show_progress=False).run(cancer_inputs, plan)
    finally:
        evasion_probe.EvasionFamily.execute = original
    ev = a.family("evasion")
    assert ev.status == "partial" and "boom" in ev.errors[0] and not a.complete


def test_a_partial_job_is_reported_stored_and_resumed(cancer_inputs, quick_plan, tmp_path, monkeypatch):  # noqa: F811
    """Issue 21 item 3: a job whose attack stopped at its budget (a Result with status "partial") keeps what it
    measured, makes its family "partial" (grade "incomplete"), is stored, and `--resume` re-runs only it."""
    plan = quick_plan.merged({"families": {"privacy": False, "extraction": False, "backdoor": False,
                                           "supply_chain": False,
                                           "evasion": {"attacks": {"fgsm": {}}, "sanity": False}}})
    from bastion.families import evasion as evasion_family

    original = evasion_family.EvasionFamily.execute

    def stopped(self, inputs, job):
        result = original(self, inputs, job)
        if job.key.endswith("/1"):
            result.status = "partial"
        return result

    monkeypatch.setattr(evasion_family.EvasionFamily, "execute", stopped)
    store = RunStore(tmp_path / "runs.sqlite")
    a = Runner(store, show_progress=False).run(cancer_inputs, plan, run_id="p1")
    ev = a.family("evasion")
    assert ev.status == "partial" and ev.grade == "incomplete" and "evasion/fgsm/1" in ev.reason
    assert ev.results and not a.complete and not ev.errors
    assert store.outcomes("p1", JobOutcome.from_json)["evasion/fgsm/1"].status == "partial"
    monkeypatch.setattr(evasion_family.EvasionFamily, "execute", original)
    ran = []

    class Counting(LocalBackend):
        def run(self, inputs, jobs, plan, on_done):
            ran.extend(j.key for j in jobs)
            super().run(inputs, jobs, plan, on_done)

    resumed = Runner(store, Counting(), show_progress=False).run(cancer_inputs, plan, run_id="p1", resume=True)
    assert ran == ["evasion/fgsm/1"] and resumed.complete and resumed.family("evasion").status == "assessed"


def curve(points, n=100, violations=0):
    return {"clean": 0.9, "curve": [{"eps": e, "robust_accuracy": r} for e, r in points], "n": n,
            "violations": violations}


def test_sanity_checks_detect_what_they_should():
    good = curve([(0.1, 0.8), (0.2, 0.5)])
    assert check_monotone({"pgd": good}).passed
    assert not check_monotone({"pgd": curve([(0.1, 0.5), (0.2, 0.6)])}).passed
    assert not check_violations({"pgd": curve([(0.1, 0.5)], violations=3)}).passed
    assert check_iterative({"fgsm": curve([(0.1, 0.85)]), "pgd": curve([(0.1, 0.8)])}).passed
    assert not check_iterative({"fgsm": curve([(0.1, 0.6)]), "pgd": curve([(0.1, 0.8)])}).passed
    assert check_iterative({"pgd": good}) is None
    assert check_convergence(good, curve([(0.1, 0.795), (0.2, 0.5)])).passed
    assert not check_convergence(good, curve([(0.1, 0.6), (0.2, 0.5)])).passed
    assert check_large_eps(curve([(5.0, 0.0)]), 10).passed
    assert not check_large_eps(curve([(5.0, 0.7)]), 10).passed
    assert not check_black_box({"pgd": good, "square": curve([(0.1, 0.5), (0.2, 0.5)])}, {"pgd"}).passed
    assert check_black_box({"pgd": good, "square": curve([(0.1, 0.9), (0.2, 0.7)])}, {"pgd"}).passed


def test_grades_follow_the_worst_finding():
    def finding(sev):
        return Finding(title=sev, family="evasion", severity=sev, metric="m")
    assert grade_of([]) == "A"
    for sev, grade in GRADES.items():
        assert grade_of([finding("info"), finding(sev)]) == grade
    assert overall_grade(["A", "N/A", "D", "B"]) == "D"
    assert overall_grade(["N/A"]) == "N/A"
    report = FamilyReport("evasion", "Evasion", "assessed", sanity=[SanityCheck("x", True, "ok")])
    assert FamilyReport.from_dict(report.to_dict()) == report
