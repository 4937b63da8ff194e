"""The privacy family: membership inference on training records (--train-data) against held-out records (--data).

Headline numbers are TPR at low FPR with bootstrap intervals; the ROC curve of each attack is kept (on a log
grid) for the report's log-log plot.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bastion.core.params import accepts, construct
from bastion.core.registry import get, register
from bastion.core.results import Finding, Result
from bastion.core.target import Access
from bastion.evaluation.metrics import roc_curve
from bastion.evaluation.privacy_verdicts import privacy_findings
from bastion.families.base import (
    ENABLED,
    Family,
    FamilyReport,
    Job,
    JobOutcome,
    Key,
    SanityCheck,
    done,
    registered,
    sample_rows,
    select,
)
from bastion.families.grading import grade_of
from bastion.families.inputs import Inputs, ModelInfo

ROC_POINTS = 120


def attack_class(name: str) -> type:
    return get("attacks", name, "privacy")


def roc_on_grid(fpr: np.ndarray, tpr: np.ndarray, n_negative: int) -> dict[str, list[float]]:
    """The ROC step function sampled at log-spaced FPRs from 1/n_negative to 1 (for a log-log plot)."""
    fpr, tpr = np.asarray(fpr, float), np.asarray(tpr, float)
    grid = np.unique(np.geomspace(1.0 / max(n_negative, 1), 1.0, ROC_POINTS))
    idx = np.searchsorted(fpr, grid + 1e-12, side="right") - 1
    return {"fpr": grid.tolist(), "tpr": np.maximum.accumulate(tpr)[np.clip(idx, 0, len(tpr) - 1)].tolist()}


def privacy_sanity_finding(check: SanityCheck) -> Finding:
    """A failed check: low when the reference models learnt no membership signal, info when the sample is just
    too small to resolve low false-positive rates (a measurement limit, not a weakness)."""
    return Finding(
        title=f"sanity check '{check.name}' failed: membership leakage may be underestimated",
        family="privacy", severity="info" if check.name == "fpr-resolution" else "low",
        metric=f"sanity:{check.name}",
        evidence={"check": check.name, "detail": check.detail}, atlas=["AML.T0024.000"],
        owasp=["ML04:2023 Membership Inference Attack"], description=check.detail,
        recommendation="Train reference models like the target (same architecture, epochs and data size) and "
                       "use more records (>= 1000 non-members to read TPR at 0.1% FPR).",
    )


@register("families", "privacy")
class PrivacyFamily(Family):
    """Membership inference (LOSS, LiRA, ...) with TPR at low FPR and per-record risk."""

    name = "privacy"
    title = "Privacy (membership inference)"
    order = 20
    atlas = ("AML.T0024.000",)
    owasp = ("ML04:2023 Membership Inference Attack",)
    schema = {
        "enabled": ENABLED,
        "n_members": Key("int", "training records (from --train-data) used as members", minimum=2),
        "n_nonmembers": Key("int", "held-out records (from --data) used as non-members", minimum=2),
        "attacks": Key("attacks", "membership-inference attacks (family privacy) and their parameters"),
    }
    sources = {"attacks": ("attacks", "privacy")}
    mitigations = ("Train with DP-SGD (`bastion defend dp-sgd`) and report the privacy budget; regularise and "
                   "stop early.",
                   "Return labels or rounded top-k scores (`label-only`, `round`, `top-k` output defenses).")
    plots = ("roc_loglog",)

    @classmethod
    def defaults(cls, inputs: Inputs, info: ModelInfo, device: str, seed: int = 0) -> dict[str, Any]:
        """LOSS always (scores), LiRA when reference models can be trained (PyTorch with --arch, scikit-learn),
        the label-only attack for label-only APIs; as many members as non-members (more on a GPU)."""
        gpu = device.startswith("cuda")
        n_train = len(inputs.train_data) if inputs.train_data is not None else 0
        n = max(2, min(n_train or 2, max(2, 2 * len(inputs.data) // 3), 1000 if gpu else 500))
        attacks: dict[str, dict[str, Any]] = {}
        if info.access_level >= Access.SCORES:
            attacks["loss"] = {}
            if (info.white_box and inputs.arch) or info.estimator:
                attacks["lira"] = {"n_reference": 8 if gpu else 4, "mode": "online"}
        elif registered("attacks", "privacy", "label-only"):
            attacks["label-only"] = {}
        return {"enabled": True, "n_members": n, "n_nonmembers": n, "attacks": attacks}

    def usable(self, info: ModelInfo) -> dict[str, dict[str, Any]]:
        return {n: p for n, p in self.section["attacks"].items() if attack_class(n).requires <= info.access_level}

    def applicable(self, inputs: Inputs, info: ModelInfo) -> str | None:
        if inputs.train_data is None:
            return "membership inference needs the training records: pass --train-data"
        if not self.section["attacks"]:
            return "the plan lists no membership-inference attack"
        if not self.usable(info):
            return f"the model grants {info.access} access; the planned attacks need more"
        return None

    def jobs(self, inputs: Inputs, info: ModelInfo) -> list[Job]:
        assert inputs.train_data is not None
        members = sample_rows(len(inputs.train_data), self.section["n_members"], self.seed, salt=2)
        nonmembers = sample_rows(len(inputs.data), self.section["n_nonmembers"], self.seed, salt=3)
        rest = np.setdiff1d(np.arange(len(inputs.data)), nonmembers)
        data: dict[str, Any] = {"members": ["train", members.tolist()], "nonmembers": ["data", nonmembers.tolist()]}
        if len(rest) >= 2:
            data["population"] = ["data", rest.tolist()]
        jobs = []
        for name, params in self.usable(info).items():
            cls = attack_class(name)
            full = {**params, "seed": self.seed}
            if inputs.arch and accepts(cls, "arch"):
                full.setdefault("arch", inputs.arch)
            construct(cls, dict(full), f"plan: families.privacy.attacks.{name}")
            jobs.append(self.job(name, name, full, data))
        return jobs

    def execute(self, inputs: Inputs, job: Job) -> Result:
        target = inputs.load_target()
        attack = construct(attack_class(job.name), dict(job.params), f"privacy attack '{job.name}'")
        datasets = {role: select(inputs, *spec) for role, spec in job.data.items()}
        result = attack.run(target, None, **datasets)
        scores = result.samples
        if scores.get("member_scores") and scores.get("nonmember_scores"):  # the ROC from the per-record scores
            fpr, tpr = roc_curve(np.asarray(scores["member_scores"]), np.asarray(scores["nonmember_scores"]))
            result.metrics["roc_curve"] = roc_on_grid(fpr, tpr, len(scores["nonmember_scores"]))
        return result

    def judge(self, results: list[Result]) -> list[Finding]:
        """Findings of membership, inversion and attribute-inference results (bastion.evaluation.privacy_verdicts)."""
        return [f for r in results for f in privacy_findings(r)]

    def conclude(self, inputs: Inputs, info: ModelInfo, outcomes: list[JobOutcome]) -> FamilyReport:
        results = [r for _, r in done(outcomes)]
        checks: list[SanityCheck] = []
        for r in results:
            m = r.metrics
            if "reference_train_accuracy" in m and "reference_test_accuracy" in m:
                gap = m["reference_train_accuracy"] - m["reference_test_accuracy"]
                checks.append(SanityCheck(
                    f"{r.attack}-references-fit", gap > 0.0,
                    f"{r.attack} reference models: {m['reference_train_accuracy']:.1%} on their training records, "
                    f"{m['reference_test_accuracy']:.1%} on the others" + ("" if gap > 0 else
                                                                         " (no membership signal to learn from)"),
                    family="privacy"))
        if results:
            n_neg = min(r.metrics.get("n_nonmembers", 0) for r in results)
            checks.append(SanityCheck(
                "fpr-resolution", n_neg >= 100,
                f"{n_neg} non-members: TPR is measurable down to {1 / max(n_neg, 1):.2%} FPR"
                + ("" if n_neg >= 1000 else " (TPR at 0.1% FPR needs >= 1000 non-members)"), family="privacy"))
        findings = self.judge(results)
        findings += [privacy_sanity_finding(c) for c in checks if not c.passed]
        headline: dict[str, float] = {}
        for r in results:
            if "auc" in r.metrics:
                headline[f"{r.attack}.auc"] = r.metrics["auc"]
            for row in r.metrics.get("tpr_at_fpr", []):
                headline[f"{r.attack}.tpr@{row['fpr']:.2%}fpr"] = row["tpr"]
        return self.report("assessed", outcomes, findings=findings, sanity=checks, headline=headline,
                           grade=grade_of(findings))
