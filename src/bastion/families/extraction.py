"""The extraction family: copies trained through the prediction API, scored by fidelity against the query budget.

The evaluation data is split (seeded): a `pool_fraction` share is what the attacker may query, the rest measures
how closely each copy agrees with the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bastion.core.errors import ParameterError
from bastion.core.params import accepts, construct
from bastion.core.registry import get, register
from bastion.core.results import Finding, Result
from bastion.families.base import ENABLED, Family, FamilyReport, Job, JobOutcome, Key, SanityCheck, done, select
from bastion.families.extraction_verdicts import extraction_findings
from bastion.families.grading import grade_of
from bastion.families.inputs import Inputs, ModelInfo


def attack_class(name: str) -> type:
    return get("attacks", name, "extraction")


def split_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool rows, evaluation rows): a seeded split of n rows."""
    order = np.random.default_rng([seed, 4]).permutation(n)
    cut = min(max(1, int(round(fraction * n))), n - 1)
    return np.sort(order[:cut]), np.sort(order[cut:])


def curve_of(result: Result) -> list[dict[str, Any]]:
    """Rows {budget, queries, fidelity, accuracy, ...} of an extraction result (one row per budget)."""
    rows = result.metrics.get("curve")
    if rows:
        return list(rows)
    return [{"budget": result.params.get("budget", [0])[-1], "queries": result.queries,
             "fidelity": result.metrics.get("fidelity"), "accuracy": result.metrics.get("accuracy")}]


@register("families", "extraction")
class ExtractionFamily(Family):
    """Fidelity of stolen copies against the number of queries."""

    name = "extraction"
    title = "Extraction (model stealing)"
    order = 30
    atlas = ("AML.T0024.002", "AML.T0005")
    owasp = ("ML05:2023 Model Theft",)
    schema = {
        "enabled": ENABLED,
        "budgets": Key("ints", "query budgets at which a copy is scored (fidelity vs queries)", minimum=1),
        "pool_fraction": Key("float", "share of --data the attacker may query; the rest scores the copies",
                             minimum=0.1, maximum=0.9),
        "attacks": Key("attacks", "extraction attacks and their parameters"),
    }
    sources = {"attacks": ("attacks", "extraction")}
    injected = ("budget", "seed")
    mitigations = ("Return labels or rounded top-k scores only; add `reverse-sigmoid` output perturbation.",
                   "Rate-limit and monitor query streams per client (`prada`).")
    plots = ("fidelity_vs_queries",)

    @classmethod
    def defaults(cls, inputs: Inputs, info: ModelInfo, device: str, seed: int = 0) -> dict[str, Any]:
        """Half of --data is the attacker's pool, budgets at 1/8, 1/4, 1/2 and all of it; Knockoff Nets."""
        pool = max(1, int(round(0.5 * len(inputs.data))))
        budgets = sorted({max(1, pool // k) for k in (8, 4, 2, 1)})
        return {"enabled": True, "budgets": budgets, "pool_fraction": 0.5, "attacks": {"knockoff": {}}}

    def usable(self, info: ModelInfo) -> dict[str, dict[str, Any]]:
        return {n: p for n, p in self.section["attacks"].items() if attack_class(n).requires <= info.access_level}

    def applicable(self, inputs: Inputs, info: ModelInfo) -> str | None:
        if not self.section["attacks"]:
            return "the plan lists no extraction attack"
        if len(inputs.data) < 4:
            return "extraction needs at least 4 records in --data (pool and evaluation)"
        if not self.usable(info):
            return f"the model grants {info.access} access; the planned attacks need more"
        return None

    def jobs(self, inputs: Inputs, info: ModelInfo) -> list[Job]:
        pool, evaluation = split_rows(len(inputs.data), self.section["pool_fraction"], self.seed)
        budgets = self.section["budgets"]
        jobs = []
        for name, params in self.usable(info).items():
            cls = attack_class(name)
            if getattr(cls, "needs_pool", True) and budgets[-1] > len(pool):
                raise ParameterError(f"plan: families.extraction.budgets go up to {budgets[-1]} queries but the "
                                     f"attacker's pool holds {len(pool)} records; lower the budgets or raise "
                                     "pool_fraction")
            full = {**params, "seed": self.seed}
            if accepts(cls, "budget"):
                full["budget"] = budgets
            construct(cls, dict(full), f"plan: families.extraction.attacks.{name}")
            data = {"data": ["data", evaluation.tolist()], "pool": ["data", pool.tolist()]}
            jobs.append(self.job(name, name, full, data, gpu=True))
        return jobs

    def execute(self, inputs: Inputs, job: Job) -> Result:
        target = inputs.load_target()
        attack = construct(attack_class(job.name), dict(job.params), f"extraction attack '{job.name}'")
        datasets = {role: select(inputs, *spec) for role, spec in job.data.items()}
        return attack.run(target, datasets.pop("data"), **datasets)

    def judge(self, results: list[Result]) -> list[Finding]:
        """Findings of fidelity curves and PRADA tests (bastion.families.extraction_verdicts)."""
        return [f for r in results for f in extraction_findings(r)]

    def conclude(self, inputs: Inputs, info: ModelInfo, outcomes: list[JobOutcome]) -> FamilyReport:
        results = [r for _, r in done(outcomes)]
        checks, headline = [], {}
        for r in results:
            rows = [row for row in curve_of(r) if row.get("fidelity") is not None]
            if not rows:
                continue
            last = rows[-1]
            headline[f"{r.attack}.fidelity"] = float(last["fidelity"])
            if last.get("accuracy") is not None:
                headline[f"{r.attack}.copy_accuracy"] = float(last["accuracy"])
            if len(rows) > 1:
                drops = [(a["budget"], b["budget"]) for a, b in zip(rows, rows[1:], strict=False)
                         if b["fidelity"] < a["fidelity"] - 0.05]
                checks.append(SanityCheck(
                    f"{r.attack}-fidelity-grows", not drops,
                    "fidelity does not fall as the budget grows" if not drops else
                    "fidelity falls between budgets " + ", ".join(f"{a}->{b}" for a, b in drops)
                    + ": copies are under-trained, so the risk may be underestimated", family="extraction"))
        findings = self.judge(results)
        return self.report("assessed", outcomes, findings=findings, sanity=checks, headline=headline,
                           grade=grade_of(findings))
