"""The backdoor family: is this model already backdoored? Model-only scans (Neural Cleanse) on clean --data, and
training-data screens (activation clustering, spectral signatures, SPECTRE, confusion training) on --train-data
when it is given, with --data as the defender's trusted clean set (as `bastion defend` passes them)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bastion.core.params import accepts, construct
from bastion.core.registry import get, register
from bastion.core.results import Finding, Result
from bastion.defenses.detect.screening import TrainingDataScreen
from bastion.families.backdoor_verdicts import backdoor_findings
from bastion.families.base import (
    ENABLED,
    Family,
    FamilyReport,
    Job,
    JobOutcome,
    Key,
    SanityCheck,
    done,
    sample_rows,
    select,
)
from bastion.families.grading import grade_of
from bastion.families.inputs import Inputs, ModelInfo

# At most this many rows of --data (a seeded share) go to the training-data screens as their trusted clean set:
# Activation Clustering's per-class test gains power with every clean sample, one forward pass each.
TRUSTED_ROWS = 5000


def scanner_class(name: str) -> type:
    return get("defenses", name, "detect")


def screens_training_data(name: str) -> bool:
    """Whether detector `name` screens a training set (the rest scan the model with clean data)."""
    return issubclass(scanner_class(name), TrainingDataScreen)


@register("families", "backdoor")
class BackdoorFamily(Family):
    """Backdoor scanning: reverse-engineered triggers and training-data screens."""

    name = "backdoor"
    title = "Backdoors (poisoned models and data)"
    order = 40
    atlas = ("AML.T0018", "AML.T0020")
    owasp = ("ML10:2023 Model Poisoning", "ML02:2023 Data Poisoning Attack")
    schema = {
        "enabled": ENABLED,
        "n_samples": Key("int", "clean samples given to model-only scanners (Neural Cleanse)", minimum=2),
        "scanners": Key("attacks", "backdoor detectors (defenses of family detect) and their parameters"),
    }
    sources = {"scanners": ("defenses", "detect")}
    mitigations = ("Do not deploy a model with a flagged class; repair it with `bastion defend fine-prune` on "
                   "trusted clean data.",
                   "Vet training-data provenance and screen it with `activation-clustering` or `spectral`.")
    plots = ("anomaly_index",)

    @classmethod
    def defaults(cls, inputs: Inputs, info: ModelInfo, device: str, seed: int = 0) -> dict[str, Any]:
        """Neural Cleanse for white-box models with at least 3 classes; activation clustering of --train-data."""
        scanners: dict[str, dict[str, Any]] = {}
        if info.white_box and info.n_classes >= 3:
            scanners["neural-cleanse"] = {"steps": 300}
        if info.white_box and inputs.train_data is not None:
            scanners["activation-clustering"] = {}
        n = min(len(inputs.data), 500 if device.startswith("cuda") else 200)
        return {"enabled": True, "n_samples": n, "scanners": scanners}

    def usable(self, inputs: Inputs, info: ModelInfo) -> dict[str, dict[str, Any]]:
        out = {}
        for name, params in self.section["scanners"].items():
            if scanner_class(name).requires > info.access_level:
                continue
            if screens_training_data(name) and (inputs.train_data is None or
                                                (info.format == "torchscript" and not inputs.arch)):
                continue  # screens read named layers: a TorchScript model needs --arch to be rebuilt
            out[name] = params
        return out

    def applicable(self, inputs: Inputs, info: ModelInfo) -> str | None:
        if not info.white_box:
            return "backdoor scanners need the model's internals (a PyTorch model with gradient access)"
        if not self.section["scanners"]:
            return "the plan lists no backdoor scanner"
        if not self.usable(inputs, info):
            return ("the planned scanners need --train-data (and --arch for a TorchScript model) or more access "
                    "than the model grants")
        return None

    def jobs(self, inputs: Inputs, info: ModelInfo) -> list[Job]:
        """One job per usable scanner. A training-data screen gets --train-data to screen and --data (up to
        TRUSTED_ROWS of it) as the defender's trusted clean set, as in `bastion defend NAME --data --train-data`:
        Activation Clustering's default decides each smaller cluster by a binomial test on it."""
        clean = sample_rows(len(inputs.data), self.section["n_samples"], self.seed, salt=5)
        trusted = None if len(inputs.data) <= TRUSTED_ROWS else \
            sample_rows(len(inputs.data), TRUSTED_ROWS, self.seed, salt=6).tolist()
        jobs = []
        for name, params in self.usable(inputs, info).items():
            cls = scanner_class(name)
            full = dict(params)
            if accepts(cls, "seed"):
                full["seed"] = self.seed
            if accepts(cls, "arch") and inputs.arch and full.get("reference"):  # the reference loads like MODEL
                full.setdefault("arch", inputs.arch)
            construct(cls, dict(full), f"plan: families.backdoor.scanners.{name}")
            data = {"data": ["data", trusted], "train_data": ["train", None]} if screens_training_data(name) \
                else {"data": ["data", clean.tolist()]}
            jobs.append(self.job(name, name, full, data, gpu=True))
        return jobs

    def execute(self, inputs: Inputs, job: Job) -> Result:
        target = inputs.load_target(eager=True)
        scanner = construct(scanner_class(job.name), dict(job.params), f"backdoor scanner '{job.name}'")
        return scanner.run(target, **{role: select(inputs, *spec) for role, spec in job.data.items()})

    def judge(self, results: list[Result]) -> list[Finding]:
        """Findings of poisoning sweeps and detector runs (bastion.families.backdoor_verdicts)."""
        return [f for r in results for f in backdoor_findings(r)]

    def conclude(self, inputs: Inputs, info: ModelInfo, outcomes: list[JobOutcome]) -> FamilyReport:
        results = [r for _, r in done(outcomes)]
        checks: list[SanityCheck] = []
        headline: dict[str, float] = {}
        findings = self.judge(results)
        for r in results:
            m = r.metrics
            if "anomaly_index" in m:
                norms = np.asarray(m.get("mask_l1", []), float)
                index = np.asarray(m["anomaly_index"], float)
                small = norms < np.median(norms) if len(norms) == len(index) else np.ones(len(index), bool)
                headline[f"{r.attack}.max_anomaly_index"] = float(index[small].max()) if small.any() else 0.0
                headline[f"{r.attack}.flagged_classes"] = float(len(m.get("flagged_classes", [])))
                floor = 0.9 * r.params.get("attack_threshold", 0.99)
                weak = [c for c, s in enumerate(m.get("attack_success", [])) if s < floor]
                checks.append(SanityCheck(
                    f"{r.attack}-triggers-found", not weak,
                    f"a trigger with at least {floor:.0%} success was reverse-engineered for every class" if not weak
                    else f"no trigger reached {floor:.0%} success for class(es) {', '.join(map(str, weak))}: "
                    "their mask sizes are upper bounds, so the anomaly index is unreliable (raise steps)",
                    family="backdoor"))
            if "poisoned_classes" in m:
                headline[f"{r.attack}.flagged_samples"] = float(m.get("n_flagged", 0))
        return self.report("assessed", outcomes, findings=findings, sanity=checks, headline=headline,
                           grade=grade_of(findings))
