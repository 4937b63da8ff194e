"""The availability family: sponge examples, early-exit slowdown and input-size growth, measured as amplification.

Default plan: white-box targets get `sponge` (Shumailov et al., 2021), `early-exit` (DeepSloth, Hong et al., 2021;
it reports itself not applicable when the model has no exits Bastion can read) and `input-size` (not applicable
when the model accepts no larger input); score/label-only targets get the genetic `sponge-ga` on latency. Each job
measures natural against crafted inputs (`bastion.attacks.availability`); `judge` grades every ratio (≥2× medium,
≥10× high, a hard cap reached high; `bastion.families.availability_verdicts`) and adds the budget gates: attack
latency (p95) above `latency_budget_ms`, or attack tokens per request above `token_budget` (LM results), is a high
finding, so `bastion assess --latency-budget MS --token-budget N --fail-on high` fails a CI job on them.
"""

from __future__ import annotations

import math
from typing import Any

from bastion.core.errors import ParameterError
from bastion.core.registry import get, register
from bastion.core.results import Finding, Result
from bastion.core.target import Access
from bastion.families.availability_verdicts import ATLAS, OWASP, judge_availability, judge_mitigation
from bastion.families.base import ENABLED, Family, Job, Key, registered, sample_rows, select
from bastion.families.inputs import Inputs, ModelInfo
from bastion.lm.lm_target import MAX_NEW_TOKENS

FAST = {"repeats": 3, "warmup": 1, "n_bootstrap": 500}  # timing settings of the default plan (2-core budget)
NOT_APPLICABLE = "not_applicable"
MITIGATION = "mitigation-"  # job-key prefix of a mitigation re-measured against the attacks
LM_MITIGATIONS = ("generation-cap", "generation-deadline")


@register("families", "availability")
class AvailabilityFamily(Family):
    """Energy/latency amplification of crafted inputs against natural ones, with latency and token budgets."""

    name = "availability"
    title = "Availability (energy, latency, tokens)"
    order = 60
    kinds = ("classifier", "language-model")
    atlas = tuple(ATLAS)  # AML.T0029 Denial of ML Service
    owasp = tuple(OWASP)
    schema = {
        "enabled": ENABLED,
        "n_samples": Key("int", "records of --data measured (natural, then crafted from them); a language model: "
                         "built-in natural prompts measured against the attack's", minimum=2),
        "attacks": Key("attacks", "availability attacks (`bastion list attacks`) and their parameters"),
        "latency_budget_ms": Key("float", "per-input latency (p95 over attack inputs, ms) above which a high finding "
                                 "is raised; 0: no budget", minimum=0),
        "token_budget": Key("int", "generated tokens per request (attack mean) above which a high finding is "
                            "raised (LM results); 0: no budget", minimum=0),
        "mitigations": Key("attacks", "mitigations re-measured against the attacks, with their cost to natural "
                           "inputs (`bastion list defenses`): sponge-detect, resource-limits (classifiers); "
                           "generation-cap, generation-deadline (language models); none by default"),
    }
    sources = {"attacks": ("attacks", "availability"), "mitigations": ("defenses", "")}
    mitigations = (
        "Bound the work per request: input-size limits, generation caps (max_new_tokens) and per-request deadlines; "
        "`bastion defend resource-limits MODEL --data DATA` re-measures the attacks behind them (generation caps of "
        "language models: `bastion.defenses.availability.request_limits.GenerationCap`).",
        "Put a density/latency anomaly detector in front of the model (`bastion defend sponge-detect MODEL --data "
        "DATA`: thresholds from natural inputs at a stated false-alarm rate, re-measured against plain and adaptive "
        "sponges) and rate-limit each client.",
    )
    plots = ("availability_distributions",)

    @classmethod
    def defaults(cls, inputs: Inputs, info: ModelInfo, device: str, seed: int = 0) -> dict[str, Any]:
        gpu = device.startswith("cuda")
        if info.kind == "language-model":  # over-generation prompts against ordinary requests (any access)
            attacks = {"overgen": {"max_new_tokens": 64, "n_bootstrap": 500, "select": 3}} if registered(
                "attacks", "availability", "overgen") else {}
            return {"enabled": True, "n_samples": 16 if gpu else 8, "attacks": attacks, "latency_budget_ms": 0.0,
                    "token_budget": 0, "mitigations": {}}
        attacks: dict[str, dict[str, Any]] = {}
        if info.access_level >= Access.GRADIENTS:
            for name, params in (("sponge", {"steps": 100 if gpu else 30, **FAST}),
                                 ("early-exit", {"steps": 50 if gpu else 30, **FAST}),
                                 ("input-size", {"max_scale": 8, "n_inputs": 4, "repeats": 3, "n_bootstrap": 500})):
                if registered("attacks", "availability", name):
                    attacks[name] = params
        elif registered("attacks", "availability", "sponge-ga"):
            attacks["sponge-ga"] = {"fitness": "latency", "population": 16, "generations": 10, **FAST}
        return {"enabled": True, "n_samples": min(len(inputs.data), 64 if gpu else 16), "attacks": attacks,
                "latency_budget_ms": 0.0, "token_budget": 0, "mitigations": {}}

    def applicable(self, inputs: Inputs, info: ModelInfo) -> str | None:
        wanted = self.section["attacks"] or self.section.get("mitigations")
        return None if wanted else "no availability attack or mitigation in the plan"

    def jobs(self, inputs: Inputs, info: ModelInfo) -> list[Job]:
        lm = info.kind == "language-model"
        data = {} if lm else {"data": ["data", sample_rows(len(inputs.data), self.section["n_samples"], self.seed,
                                                          salt=6).tolist()]}
        mitigations = [self.job(MITIGATION + name, name, dict(params), data)
                       for name, params in self._mitigations(lm).items()]
        if lm:
            return [self.job(name, name, self._cap(name, dict(params)), {}, gpu=True)
                    for name, params in self.section["attacks"].items()] + mitigations
        return [self.job(name, name, dict(params), data, gpu=name != "input-size")
                for name, params in self.section["attacks"].items()] + mitigations

    def _mitigations(self, lm: bool) -> dict[str, dict[str, Any]]:
        """The plan's mitigations, each an availability defense for this kind of model (one error line else)."""
        chosen = self.section.get("mitigations") or {}
        for name in chosen:
            cls = get("defenses", name)
            if getattr(cls, "threat", "") != "availability":
                raise ParameterError(f"plan: availability.mitigations.{name} is not an availability mitigation; "
                                     "use sponge-detect, resource-limits, generation-cap or generation-deadline")
            if (name in LM_MITIGATIONS) != lm:
                raise ParameterError(f"plan: availability.mitigations.{name} is for "
                                     f"{'language models' if name in LM_MITIGATIONS else 'classifiers'}, and this "
                                     f"model is {'a language model' if lm else 'a classifier'}")
        return chosen

    def _cap(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """A generation cap above the plan's token budget, so that replies can be seen to exceed it."""
        budget = int(self.section.get("token_budget") or 0)
        if budget and int(params.get("max_new_tokens", 64)) <= budget:
            params["max_new_tokens"] = min(MAX_NEW_TOKENS, 2 * budget)
        return params

    def _execute_lm(self, inputs: Inputs, job: Job) -> Result:
        from bastion.attacks.availability.lm_prompts import NATURAL_PROMPTS

        mitigation = job.key.split("/", 1)[-1].startswith(MITIGATION)
        runner = get("defenses", job.name) if mitigation else get("attacks", job.name, "availability")
        instance = runner(**job.params, seed=self.seed)
        cap = getattr(instance, "base_cap", None) or getattr(instance, "max_new_tokens", 64)
        target = inputs.load_lm(max_new_tokens=cap, seed=self.seed)
        prompts = [NATURAL_PROMPTS[i % len(NATURAL_PROMPTS)] for i in range(self.section["n_samples"])]
        return instance.run(target, prompts=prompts)

    def execute(self, inputs: Inputs, job: Job) -> Result:
        if inputs.language_model:
            return self._execute_lm(inputs, job)
        target, data = inputs.load_target(max_queries=inputs.max_queries), select(inputs, *job.data["data"])
        if job.key.split("/", 1)[-1].startswith(MITIGATION):
            return get("defenses", job.name)(**job.params, seed=self.seed).run(target, data)
        attack = get("attacks", job.name, "availability")(**job.params, seed=self.seed)
        try:
            return attack.run(target, data)
        except ParameterError as exc:  # no exits / no activation layers: this attack does not apply to the model
            if job.name not in ("early-exit", "input-size", "sponge"):
                raise
            return Result(family=self.name, attack=job.name, params=attack.get_params(),
                          metrics={NOT_APPLICABLE: str(exc)}, queries=target.queries, device=str(target.device))

    def judge(self, results: list[Result]) -> list[Finding]:
        findings: list[Finding] = []
        for result in results:
            if NOT_APPLICABLE in result.metrics:
                continue
            if "mitigation" in result.metrics:  # a mitigation re-measured against the attacks (sponge-detect, ...)
                findings += judge_mitigation(result)
                continue
            findings += judge_availability(result) + self._budgets(result)
        return findings

    def _budgets(self, result: Result) -> list[Finding]:
        """High findings where the attack inputs exceed the plan's latency or token budget."""
        limits = {"latency_ms": ("latency_budget_ms", "p95", "ms", "latency per input (p95)"),
                  "tokens": ("token_budget", "mean", "tokens", "generated tokens per request (mean)")}
        out = []
        for dim in result.metrics.get("dimensions", []):
            if dim["metric"] not in limits:
                continue
            key, stat, unit, what = limits[dim["metric"]]
            budget = float(self.section.get(key) or 0)
            value = float(dim["attack"].get(stat, dim["attack"].get("mean", 0.0)))
            if budget > 0 and value > budget:
                natural = float(dim["natural"].get(stat, dim["natural"].get("mean", 0.0)))
                out.append(Finding(
                    title=f"{result.attack}: {what} {value:.3g} {unit} exceeds the budget of {budget:g} {unit} "
                          f"(natural inputs: {natural:.3g} {unit})",
                    family=self.name, severity="high", metric=f"{key}_exceeded", value=value, threshold=budget,
                    evidence={"attack": result.attack, "natural": natural, "budget": budget,
                              "lower_bound": bool(dim.get("lower_bound", False))},
                    atlas=list(self.atlas), owasp=list(self.owasp),
                    description=f"Crafted inputs push the {what} past the budget the plan sets.",
                    recommendation=self.mitigations[0]))
        return out

    def headline(self, results: list[Result]) -> dict[str, float]:
        return {f"{r.attack}.{d['metric']}_ratio": float(d["ratio"]["estimate"])
                for r in results for d in r.metrics.get("dimensions", [])}


def with_budgets(override: dict[str, Any], latency_ms: float | None, tokens: int | None) -> dict[str, Any]:
    """A parsed plan with `bastion assess --latency-budget MS --token-budget N` written into
    `families.availability` (the command line wins over the plan file); bad values are one-line errors."""
    if latency_ms is None and tokens is None:
        return override
    if latency_ms is not None and not (math.isfinite(latency_ms) and latency_ms > 0):
        raise ParameterError(f"--latency-budget must be a positive number of milliseconds, got {latency_ms}")
    if tokens is not None and tokens < 1:
        raise ParameterError(f"--token-budget must be a positive number of tokens, got {tokens}")
    out = dict(override)
    if not isinstance(out.get("families") or {}, dict):
        raise ParameterError("plan: families must be a table of family -> settings")
    families = dict(out.get("families") or {})
    section = families.get("availability", {})
    section = {"enabled": section} if isinstance(section, bool) else dict(section or {})
    if latency_ms is not None:
        section["latency_budget_ms"] = float(latency_ms)
    if tokens is not None:
        section["token_budget"] = int(tokens)
    families["availability"] = section
    out["families"] = families
    return out
