"""The evasion family: robustness curves of the planned attacks over sample shards, plus the sanity-check jobs.

Defaults: L∞ for images, L2 for feature vectors; the epsilons are fractions (5%, 10%, 20%, 40%) of the median
distance from a sample to the nearest sample of another class, so they mean the same thing on every dataset;
FGSM, PGD and APGD-CE for white-box models (the `auto` ensemble instead of APGD-CE on a GPU), Square for score
APIs, HopSkipJump for label APIs. A GPU raises the sample count and the PGD steps.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from bastion.core.params import construct
from bastion.core.registry import get, register
from bastion.core.results import Finding, Result
from bastion.core.target import Access
from bastion.evaluation.scoring import EVASION_ATLAS, EVASION_OWASP, evaluation_note
from bastion.families import sanity
from bastion.families.base import (
    ENABLED,
    Family,
    FamilyReport,
    Job,
    JobOutcome,
    Key,
    done,
    registered,
    sample_rows,
    select,
)
from bastion.families.grading import black_box_reason, grade_of
from bastion.families.inputs import Inputs, ModelInfo

SANITY_DOUBLED, SANITY_LARGE, SANITY_SETUP = "sanity-doubled-steps", "sanity-large-eps", "sanity-setup"
SETUP_SAMPLES = 256
EPS_FRACTIONS = (0.05, 0.1, 0.2, 0.4)


def full_range(info: ModelInfo, norm: str) -> float:
    """The norm of the largest perturbation inside the input bounds."""
    dim = float(np.prod(info.input_shape))
    width = info.bounds[1] - info.bounds[0]
    return width * {"linf": 1.0, "l2": dim ** 0.5, "l1": dim}[norm]


def _round2(value: float) -> float:
    """Two significant digits."""
    if value <= 0:
        return value
    digits = 1 - int(math.floor(math.log10(value)))
    return round(value, digits)


def class_distance(x: np.ndarray, y: np.ndarray, norm: str, seed: int, n_probe: int = 200,
                   n_ref: int = 2000) -> float:
    """Median distance from a sample to the nearest sample of another class (on seeded subsets)."""
    rng = np.random.default_rng([seed, 7])
    flat = x.reshape(len(x), -1).astype(np.float64)
    probe = rng.permutation(len(x))[:n_probe]
    ref = rng.permutation(len(x))[:n_ref]
    best = np.full(len(probe), np.inf)
    for chunk in np.array_split(np.arange(len(ref)), max(1, len(ref) // 256)):
        diff = flat[probe][:, None, :] - flat[ref[chunk]][None, :, :]
        if norm == "linf":
            dist = np.abs(diff).max(-1)
        elif norm == "l1":
            dist = np.abs(diff).sum(-1)
        else:
            dist = np.sqrt((diff ** 2).sum(-1))
        other = y[probe][:, None] != y[ref[chunk]][None, :]
        best = np.minimum(best, np.where(other, dist, np.inf).min(-1))
    finite = best[np.isfinite(best)]
    return float(np.median(finite)) if len(finite) else 0.0


def default_eps(inputs: Inputs, info: ModelInfo, norm: str, seed: int) -> list[float]:
    """Epsilons as fractions of the typical distance to another class, below half the input range."""
    full = full_range(info, norm)
    scale = class_distance(inputs.data.x, inputs.data.y, norm, seed) or 0.1 * full
    eps = sorted({_round2(min(f * scale, 0.45 * full)) for f in EPS_FRACTIONS})
    return [e for e in eps if e > 0] or [_round2(0.01 * full)]


def default_norm(input_shape: tuple[int, ...] | list[int]) -> str:
    """L∞ for images (two or more input dimensions), L2 for feature vectors: `assess` and `attack` agree."""
    return "linf" if len(input_shape) >= 2 else "l2"


def severity_from_drop(relative_drop: float) -> str:
    """Severity of a relative loss of accuracy (0 = no loss, 1 = everything lost)."""
    if relative_drop >= 0.9:
        return "critical"
    if relative_drop >= 0.6:
        return "high"
    if relative_drop >= 0.3:
        return "medium"
    if relative_drop >= 0.1:
        return "low"
    return "info"


def evasion_findings(attack: str, norm: str, clean: float, curve: list[dict], violations: int) -> list[Finding]:
    """One finding for the robustness curve (judged at its largest epsilon), one for constraint violations."""
    findings = []
    if curve:
        last = curve[-1]
        drop = (clean - last["robust_accuracy"]) / clean if clean > 0 else 0.0
        findings.append(Finding(
            title=f"{attack} lowers accuracy from {clean:.1%} to {last['robust_accuracy']:.1%} at "
                  f"{norm} eps={last['eps']:g}",
            family="evasion",
            severity=severity_from_drop(drop),  # type: ignore[arg-type]
            metric="robust_accuracy",
            value=last["robust_accuracy"],
            threshold=clean,
            evidence={"attack": attack, "norm": norm, "clean_accuracy": clean, "curve": curve},
            atlas=list(EVASION_ATLAS),
            owasp=list(EVASION_OWASP),
            description="Small input perturbations change the model's decisions.",
            recommendation="Harden with adversarial training (PGD-AT or TRADES) and re-assess with `auto`.",
        ))
    if violations:  # about Bastion's evaluation (e.g. float32 rounding of an iterate), never about the model
        findings.append(evaluation_note(
            f"evaluation note: {violations} examples from {attack} left the {norm} ball or the input bounds "
            "(Bastion's own numerics) and were not counted as fooling the model",
            metric="constraint_violations", value=float(violations), evidence={"attack": attack, "norm": norm},
            description="This is about the attack's arithmetic, not the model: the invalid examples were "
                        "discarded, so robust accuracy may be slightly overestimated."))
    return findings


def attack_class(name: str) -> type:
    return get("attacks", name, "evasion")


def pooled_outcomes(results: list[Result]) -> dict[str, Any] | None:
    """The shards' per-sample outcomes side by side ({eps, correct, robust}), or None when a shard lacks them or
    the shards were attacked at different epsilons."""
    parts = [r.samples for r in results]
    if not all(p.get("correct") is not None and p.get("robust") is not None and p.get("eps") is not None
               for p in parts) or any(p["eps"] != parts[0]["eps"] for p in parts):
        return None
    return {"eps": list(parts[0]["eps"]), "correct": [c for p in parts for c in p["correct"]],
            "robust": [row for p in parts for row in p["robust"]]}


def curves_from_outcomes(outcomes: dict[str, Any]) -> tuple[float, list[dict], list[dict]]:
    """Clean accuracy, robust accuracy per eps and attack success per eps (the share of correctly classified
    samples with a valid adversarial example within eps), counted over every sample."""
    correct = np.asarray(outcomes["correct"], bool)
    robust = np.asarray(outcomes["robust"], bool).reshape(len(correct), len(outcomes["eps"]))
    n_correct = int(correct.sum())
    curve = [{"eps": e, "robust_accuracy": float(robust[:, k].mean()) if len(correct) else 0.0}
             for k, e in enumerate(outcomes["eps"])]
    success = [{"eps": e, "rate": float((correct & ~robust[:, k]).sum() / n_correct) if n_correct else 0.0}
               for k, e in enumerate(outcomes["eps"])]
    return float(correct.mean()) if len(correct) else 0.0, curve, success


def check_finding(check: dict[str, Any]) -> Finding:
    """A failed sanity check (`Check.summary()`): the robustness number may be too optimistic."""
    return Finding(
        title=f"Sanity check {check['id']} failed ({check['check']}): {check['detail']}", family="evasion",
        severity=check.get("severity") or "medium", metric=f"sanity_check_{check['id']}", value=check.get("value"),
        threshold=check.get("threshold"), evidence={"check": check["id"], **(check.get("evidence") or {})},
        atlas=EVASION_ATLAS, owasp=EVASION_OWASP,
        description="The robust accuracy may be too optimistic: the evaluation shows a sign of gradient masking, "
                    "randomness or a faulty attack.",
        recommendation="Trust the escalated result of `auto` (EOT, BPDA, black-box and transfer attacks), not a "
                       "single gradient attack.")


def failed_checks(results: list[Result]) -> list[dict[str, Any]]:
    """The failed sanity checks the results report (`metrics["sanity_checks"]`), each once across shards."""
    failed, seen = [], set()
    for r in results:
        for c in r.metrics.get("sanity_checks", []):
            if "id" in c and not c.get("passed", True) and (c["id"], c.get("detail")) not in seen:
                seen.add((c["id"], c.get("detail")))
                failed.append(c)
    return failed


def merge_shards(name: str, results: list[Result]) -> Result:
    """One result from the shards of an attack: accuracies and attack success counted from the shards' per-sample
    outcomes (`Result.samples`; sample-weighted shard figures for an attack without them), summed costs, the
    failed sanity checks kept (the family judges the merged curve once, in `judge`)."""
    if len(results) == 1:
        return results[0]
    n = np.array([r.metrics["n_samples"] for r in results], dtype=float)
    weights = n / n.sum()
    outcomes = pooled_outcomes(results)
    if outcomes is not None:
        clean, curve, success = curves_from_outcomes(outcomes)
    else:
        clean = float(np.dot(weights, [r.metrics["clean_accuracy"] for r in results]))
        eps = [p["eps"] for p in results[0].metrics["robust_accuracy"]]
        curve = [{"eps": e, "robust_accuracy": float(np.dot(weights, [r.metrics["robust_accuracy"][k]
                                                                      ["robust_accuracy"] for r in results]))}
                 for k, e in enumerate(eps)]
        success = [{"eps": c["eps"], "rate": (1 - c["robust_accuracy"] / clean) if clean else 0.0} for c in curve]
    violations = int(sum(r.metrics.get("constraint_violations", 0) for r in results))
    norm = results[0].metrics["norm"]
    metrics: dict[str, Any] = {
        "clean_accuracy": clean, "robust_accuracy": curve, "n_samples": int(n.sum()), "norm": norm,
        "attack_success_rate": success,
        "constraint_violations": violations, "shards": len(results),
    }
    if results[0].metrics.get("inner_attack"):
        metrics["inner_attack"] = results[0].metrics["inner_attack"]
    if all("unbounded_success_rate" in r.metrics for r in results):
        metrics["unbounded_success_rate"] = float(np.dot(weights, [r.metrics["unbounded_success_rate"]
                                                                   for r in results]))
    if any("sanity_checks" in r.metrics for r in results):  # e.g. auto's checks: failed on any shard, once
        passed = [c for c in results[0].metrics.get("sanity_checks", []) if c.get("passed", True)]
        failed = failed_checks(results)
        metrics["sanity_checks"] = [c for c in passed if c.get("id") not in {f["id"] for f in failed}] + failed
    params = {k: v for k, v in results[0].params.items() if k != "job"}
    partial = [r for r in results if r.partial]
    return Result(family="evasion", attack=name, params=params, metrics=metrics,
                  queries=sum(r.queries for r in results), seconds=sum(r.seconds for r in results),
                  device=results[0].device, samples=outcomes or {},
                  status="partial" if partial else "complete", reason="; ".join(r.reason for r in partial if r.reason))


def setup_checks(inputs: Inputs, rows: list[int]) -> Result:
    """Checks 1-3 of THREATS.md §1 on the target itself (bounds, eval mode, logits; deterministic forward pass
    without autograd; no zero input gradients), with `bastion.evaluation.checks`."""
    import time

    import torch

    from bastion.evaluation import checks

    start = time.perf_counter()
    target = inputs.load_target()
    data = select(inputs, "data", rows)
    x = torch.as_tensor(data.x, dtype=torch.float32, device=target.device)
    y = torch.as_tensor(data.y, dtype=torch.long, device=target.device)
    found = [checks.check_setup(target, x), checks.check_forward(target, x), checks.check_gradients(target, x, y)]
    return Result(family="evasion", attack=SANITY_SETUP, params={"n_samples": len(rows)},
                        metrics={"sanity_checks": [c.summary() for c in found]}, queries=target.queries,
                        seconds=time.perf_counter() - start, device=str(target.device))


def reported_checks(results: list[Result]) -> list[sanity.SanityCheck]:
    """The sanity checks attacks report themselves (`metrics["sanity_checks"]`, e.g. `auto`), shards merged:
    a check passes when it passed on every shard."""
    merged: dict[tuple[str, str], sanity.SanityCheck] = {}
    for r in results:
        for c in r.metrics.get("sanity_checks", []):
            key = (r.attack, str(c.get("check", c.get("id"))))
            name = f"{r.attack}: {c.get('id', '')} {c.get('check', '')}".strip()
            old = merged.get(key)
            if old is None or (old.passed and not c.get("passed", True)):
                merged[key] = sanity.SanityCheck(name, bool(c.get("passed", True)), str(c.get("detail", "")))
    return list(merged.values())


def as_curve(result: Result) -> sanity.Curve:
    m = result.metrics
    return {"clean": m["clean_accuracy"], "curve": m["robust_accuracy"], "n": m["n_samples"],
            "violations": m.get("constraint_violations", 0)}


@register("families", "evasion")
class EvasionFamily(Family):
    """Robust accuracy per epsilon for each planned attack, with automatic sanity checks."""

    name = "evasion"
    title = "Evasion (adversarial examples)"
    order = 10
    atlas = ("AML.T0043", "AML.T0015")
    owasp = ("ML01:2023 Input Manipulation Attack",)
    schema = {
        "enabled": ENABLED,
        "n_samples": Key("int", "evaluation samples drawn (seeded) from --data", minimum=1),
        "norm": Key("str", "norm of the perturbation budget", choices=("linf", "l2", "l1")),
        "eps": Key("floats", "perturbation budgets, in the model's input units", minimum=0, exclusive_min=True),
        "shards": Key("int", "independent sample shards, one job each (Ray runs them in parallel)", minimum=1),
        "sanity": Key("bool", "add the sanity-check jobs: PGD with doubled steps and PGD at a very large epsilon"),
        "attacks": Key("attacks", "evasion attacks (`bastion list attacks`) and their parameters"),
    }
    sources = {"attacks": ("attacks", "evasion")}
    injected = ("eps", "norm", "seed")
    mitigations = ("Adversarial training: `bastion defend adv-train` (PGD-AT) or `bastion defend trades`, then "
                   "re-assess and compare the runs (`bastion report compare`).",
                   "Certify critical decisions with randomized smoothing (`bastion defend smooth`).")
    plots = ("robustness_curve",)

    @classmethod
    def defaults(cls, inputs: Inputs, info: ModelInfo, device: str, seed: int = 0) -> dict[str, Any]:
        gpu = device.startswith("cuda")
        norm = default_norm(info.input_shape)
        n = min(len(inputs.data), 1000 if gpu else 500)
        attacks: dict[str, dict[str, Any]] = {}
        if info.access_level >= Access.GRADIENTS:
            attacks = {"fgsm": {}, "pgd": {"steps": 50 if gpu else 20}}
            strongest = "auto" if gpu and registered("attacks", "evasion", "auto") else "apgd-ce"
            if registered("attacks", "evasion", strongest):
                attacks[strongest] = {}
        elif info.access_level >= Access.SCORES and registered("attacks", "evasion", "square"):
            attacks = {"square": {}}
        elif registered("attacks", "evasion", "hopskipjump"):
            attacks = {"hopskipjump": {}}
        return {"enabled": True, "n_samples": n, "norm": norm, "eps": default_eps(inputs, info, norm, seed),
                "shards": max(1, math.ceil(n / 256)), "sanity": True, "attacks": attacks}

    def merge(self, name: str, results: list[Result]) -> Result:
        return merge_shards(name, results)

    def judge(self, results: list[Result]) -> list[Finding]:
        """Per attack: the robustness curve judged at its largest epsilon (and an evaluation note for discarded
        examples), then the sanity checks it reports as failed (e.g. those `auto` and the setup probe run)."""
        out: list[Finding] = []
        for r in results:
            m = r.metrics
            if "robust_accuracy" in m:
                label = f"{r.attack} ({m['inner_attack']})" if m.get("inner_attack") else r.attack
                out += evasion_findings(label, m["norm"], m["clean_accuracy"], m["robust_accuracy"],
                                        int(m.get("constraint_violations", 0)))
            out += [check_finding(c) for c in failed_checks([r])]
        return out

    def usable(self, info: ModelInfo) -> dict[str, dict[str, Any]]:
        """The planned attacks the model's access allows."""
        return {name: params for name, params in self.section["attacks"].items()
                if attack_class(name).requires <= info.access_level}

    def applicable(self, inputs: Inputs, info: ModelInfo) -> str | None:
        if not self.section["attacks"]:
            return "the plan lists no evasion attack"
        if not self.usable(info):
            return (f"the model grants {info.access} access; the planned attacks "
                    f"({', '.join(self.section['attacks'])}) need more")
        return None

    def jobs(self, inputs: Inputs, info: ModelInfo) -> list[Job]:
        rows = sample_rows(len(inputs.data), self.section["n_samples"], self.seed, salt=1)
        shards = np.array_split(rows, max(1, min(self.section["shards"], len(rows))))
        eps, norm = self.section["eps"], self.section["norm"]
        jobs = []
        for name, params in self.usable(info).items():
            full = {**params, "eps": eps, "norm": norm, "seed": self.seed}
            construct(attack_class(name), dict(full), f"plan: families.evasion.attacks.{name}")
            jobs += [self.job(f"{name}/{i}", name, full, {"data": ["data", s.tolist()]}, gpu=True)
                     for i, s in enumerate(shards)]
        if self.section["sanity"] and "auto" not in self.section["attacks"]:  # auto runs checks 1-3 itself
            jobs.append(self.job(SANITY_SETUP, SANITY_SETUP, {}, {"data": ["data", shards[0][:SETUP_SAMPLES].tolist()]},
                                 gpu=True))
        if self.section["sanity"] and info.access_level >= Access.GRADIENTS:
            pgd = dict(self.section["attacks"].get("pgd", {"steps": 20}))
            steps = int(pgd.get("steps", 10))
            large = 0.5 * full_range(info, norm)
            for i, s in enumerate(shards):
                data = {"data": ["data", s.tolist()]}
                if "pgd" in self.section["attacks"]:
                    doubled = {**pgd, "steps": 2 * steps, "eps": eps, "norm": norm, "seed": self.seed}
                    jobs.append(self.job(f"{SANITY_DOUBLED}/{i}", "pgd", doubled, data, gpu=True))
                big = {**pgd, "eps": [large], "norm": norm, "seed": self.seed}
                jobs.append(self.job(f"{SANITY_LARGE}/{i}", "pgd", big, data, gpu=True))
        return jobs

    def execute(self, inputs: Inputs, job: Job) -> Result:
        if job.name == SANITY_SETUP:
            return setup_checks(inputs, job.data["data"][1])
        target = inputs.load_target()
        attack = construct(attack_class(job.name), dict(job.params), f"evasion attack '{job.name}'")
        return attack.run(target, select(inputs, *job.data["data"]))

    def conclude(self, inputs: Inputs, info: ModelInfo, outcomes: list[JobOutcome]) -> FamilyReport:
        groups: dict[str, list[Result]] = defaultdict(list)
        names: dict[str, str] = {}
        for outcome, result in done(outcomes):
            group = outcome.key.split("/")[1]
            groups[group].append(result)
            names[group] = outcome.name
        setup = groups.pop(SANITY_SETUP, [])
        merged = {g: self.merge(names[g], rs) for g, rs in groups.items()}
        main = {g: r for g, r in merged.items() if not g.startswith("sanity-")}
        curves = {g: as_curve(r) for g, r in main.items()}
        white_box = {g for g in main if attack_class(g).requires >= Access.GRADIENTS}
        checks = [
            sanity.check_violations(curves) if curves else None,
            sanity.check_monotone(curves) if curves else None,
            sanity.check_iterative(curves),
            sanity.check_convergence(curves.get("pgd"), as_curve(merged[SANITY_DOUBLED])
                                     if SANITY_DOUBLED in merged else None),
            sanity.check_large_eps(as_curve(merged[SANITY_LARGE]) if SANITY_LARGE in merged else None,
                                   info.n_classes),
            sanity.check_black_box(curves, white_box),
            sanity.check_unbounded({g: r.metrics for g, r in main.items()}),
        ]
        checks = [c for c in checks if c is not None]
        checks += reported_checks(setup + [r for g, rs in groups.items() if not g.startswith("sanity-") for r in rs])
        findings = self.judge(list(main.values()) + setup)
        findings += [sanity.sanity_finding(c) for c in checks if not c.passed]
        headline: dict[str, float] = {}
        if main:
            headline["clean_accuracy"] = min(r.metrics["clean_accuracy"] for r in main.values())
            for r in main.values():
                for p in r.metrics["robust_accuracy"]:
                    key = f"robust_accuracy@{r.metrics['norm']}={p['eps']:g}"
                    headline[key] = min(headline.get(key, 1.0), p["robust_accuracy"])
        return self.report("assessed", outcomes, reason=black_box_reason(info.white_box), findings=findings,
                           sanity=checks, headline=headline, grade=grade_of(findings), results=list(main.values()))
