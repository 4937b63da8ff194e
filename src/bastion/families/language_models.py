"""The language-model family: system-prompt leakage, prompt injection, jailbreaks and membership of an LLM.

It assesses what `bastion.lm.open_lm` opens: a `.gguf` file or a Hugging Face folder (white-box, through
`transformers`; scanned before loading) or an OpenAI-compatible `http(s)://host/v1` endpoint (text). The deployed
system prompt (`bastion assess MODEL --system-prompt FILE`) is the one every probe runs under.

Default plan (sized for 2 CPU cores and a ~300M-parameter model: about 2 minutes):
- `leak`: the extraction-prompt library (Perez & Ribeiro 2022; Zhang, Carlini & Ippolito 2024) against a canary
  planted in the system prompt (seeded, so the same seed gives the same transcripts);
- `inject`: two documents x three tasks x five techniques x direct/indirect placement (Greshake et al. 2023;
  Liu et al. 2024), canary goals and forced labels measured exactly;
- `jailbreak`: five template/encoding techniques on `behaviours` built-in harmful behaviours and `benign`
  over-refusal prompts, judged by a classifier whose error is measured and corrected (Rogan-Gladen);
- `membership` (white-box, when member texts (`--train-data`) and non-member texts (`--data`) are given): LOSS,
  zlib, Min-K%, Min-K%++ (Shi et al. 2024; Zhang et al. 2025).
`judge` is `bastion.families.llm_verdicts` (OWASP LLM01/LLM02/LLM07 2025, MITRE ATLAS).
"""

from __future__ import annotations

import random
from typing import Any

from bastion.core.errors import ParameterError
from bastion.core.params import accepts
from bastion.core.registry import get, register
from bastion.core.results import Finding, Result
from bastion.families.base import ENABLED, Family, Job, Key, SanityCheck, registered
from bastion.families.inputs import Inputs, ModelInfo
from bastion.families.llm_verdicts import ATLAS, OWASP, finite, llm_findings

DEFAULT_JAILBREAKS = ["direct", "roleplay", "refusal_suppression", "prefix_injection", "base64"]
WHITE_BOX_ONLY = ("membership", "gcg", "exposure")
NEEDS_BEHAVIOURS = ("jailbreak", "gcg")


@register("families", "llm")
class LLMFamily(Family):
    """Leaks, injections, jailbreaks and membership of a language model, measured with canaries and a judge of
    measured error."""

    name = "llm"
    title = "Language models (injection, leakage, jailbreaks)"
    order = 55
    kinds = ("language-model",)
    atlas = ATLAS
    owasp = OWASP
    schema = {
        "enabled": ENABLED,
        "attacks": Key("attacks", "language-model probes (`bastion list attacks`: leak, inject, jailbreak, gcg, "
                       "membership) and their parameters"),
        "behaviours": Key("int", "built-in harmful behaviours the jailbreak (and gcg) probes try", minimum=1,
                          maximum=18),
        "benign": Key("int", "benign look-alike prompts measured for over-refusal beside the jailbreaks",
                      minimum=0, maximum=50),
    }
    sources = {"attacks": ("attacks", "llm")}
    injected = ("seed", "max_queries", "system_prompt")
    mitigations = (
        "Keep secrets out of the system prompt; enforce them server-side (tools with their own access control).",
        "Serve the model behind `bastion guard` (injection screen, leak filter for known secrets, token ceilings) "
        "and re-assess through the guard's URL.",
        "Treat retrieved documents and tool outputs as data, not instructions; check task outputs against their "
        "schema (labels, fields) before acting on them.",
    )

    plots = ("llm_rates",)
    sections = ("llm_probes",)  # per-probe tables and escaped example transcripts

    @classmethod
    def defaults(cls, inputs: Inputs, info: ModelInfo, device: str, seed: int = 0) -> dict[str, Any]:
        gpu = device.startswith("cuda")
        attacks: dict[str, dict[str, Any]] = {}
        for name, params in (("leak", {"max_new_tokens": 64}),
                             ("inject", {"documents": 4 if gpu else 2, "max_new_tokens": 32}),
                             ("jailbreak", {"techniques": list(DEFAULT_JAILBREAKS), "max_new_tokens": 64,
                                            "n_bootstrap": 1000})):
            if registered("attacks", "llm", name):
                attacks[name] = params
        if info.white_box and inputs.texts.get("members") and inputs.texts.get("nonmembers"):
            attacks["membership"] = {"n_bootstrap": 500}
        return {"enabled": True, "attacks": attacks, "behaviours": 18 if gpu else 6, "benign": 30 if gpu else 10}

    def applicable(self, inputs: Inputs, info: ModelInfo) -> str | None:
        return None if self.section["attacks"] else "no language-model probe in the plan"

    def jobs(self, inputs: Inputs, info: ModelInfo) -> list[Job]:
        attacks = self.section["attacks"]
        for name in attacks:
            if name in WHITE_BOX_ONLY and not info.white_box:
                raise ParameterError(f"plan: families.llm.attacks.{name} needs white-box access (a local folder or "
                                     f".gguf file), not an endpoint")
        if "exposure" in attacks:
            raise ParameterError("plan: families.llm.attacks.exposure needs the inserted canary's secret: run "
                                 "`bastion attack llm exposure MODEL --secret ...`")
        if "membership" in attacks and not (inputs.texts.get("members") and inputs.texts.get("nonmembers")):
            raise ParameterError("plan: families.llm.attacks.membership needs member texts (--train-data) and "
                                 "non-member texts (--data)")
        return [self.job(name, name, dict(params), {}, gpu=True) for name, params in attacks.items()]

    def execute(self, inputs: Inputs, job: Job) -> Result:
        from bastion.attacks.llm.jailbreak_prompts import behaviours, overrefusal_prompts
        from bastion.attacks.llm.leakage import make_canary

        cls = get("attacks", job.name, "llm")
        params = dict(job.params)
        if accepts(cls, "seed"):
            params["seed"] = self.seed
        attack = cls(**params)
        target = inputs.load_lm(max_new_tokens=int(params.get("max_new_tokens", 64)), seed=self.seed)
        rng = random.Random(self.seed * 1_000_003 + job.seed_offset)  # the canaries: the same seed, the same run
        if job.name == "leak":
            result = attack.run(target, canary=make_canary(rng))
        elif job.name == "inject":
            result = attack.run(target, canary="PWNED-" + "".join(rng.choice("0123456789ABCDEF") for _ in range(8)))
        elif job.name in NEEDS_BEHAVIOURS:
            chosen = behaviours("bastion")[: self.section["behaviours"]]
            benign = overrefusal_prompts(self.section["benign"]) if self.section["benign"] else None
            result = attack.run(target, behaviours=chosen, **({"benign": benign} if job.name == "jailbreak" else {}))
        elif job.name == "membership":
            result = attack.run(target, members=inputs.texts["members"], nonmembers=inputs.texts["nonmembers"])
        else:
            raise ParameterError(f"the llm family cannot run {job.name!r} in an assessment")
        result.params.setdefault("target", target.describe())
        result.queries = max(result.queries, target.queries)
        return result

    def judge(self, results: list[Result]) -> list[Finding]:
        findings = [f for r in results for f in llm_findings(r)]
        for finding in findings:
            finding.family = self.name
        return findings

    def sanity(self, inputs: Inputs, info: ModelInfo, results: list[Result]) -> list[SanityCheck]:
        checks = []
        replies = [r for res in results if res.attack in ("leak", "inject")
                   for c in (res.samples or {}).get("cells", []) for r in (c.get("replies") or [c.get("reply")])
                   if isinstance(r, str)]
        if replies:
            empty = sum(not r.strip() for r in replies) / len(replies)
            checks.append(SanityCheck(
                "target-answers", empty < 0.5,
                f"{empty:.0%} of {len(replies)} replies were empty" + (
                    ": the target may not be answering (check the endpoint, the chat template, max_new_tokens); "
                    "no leak or injection can be seen in an empty reply" if empty >= 0.5 else ""), family=self.name))
        for res in results:
            if res.attack != "inject":
                continue
            baseline = res.metrics.get("baseline") or {}
            graded = [row for task, row in baseline.items() if task in ("classify", "extract") and row.get("n")]
            if graded:
                right = sum(row["successes"] for row in graded) / sum(row["n"] for row in graded)
                checks.append(SanityCheck(
                    "does-the-task", right >= 0.5,
                    f"without injection the model did the classify/extract task in {right:.0%} of cases" + (
                        ": a model that follows no instruction also follows no injected one, so a low injection "
                        "rate says little" if right < 0.5 else ""), family=self.name))
            break
        return checks

    def headline(self, results: list[Result]) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in results:
            overall = r.metrics.get("overall") or {}
            if r.attack in ("leak", "inject"):
                out[f"{r.attack}.rate"] = finite(overall.get("rate"))
            elif r.attack == "jailbreak":
                out["jailbreak.corrected_rate"] = finite(overall.get("corrected"))
                out["jailbreak.raw_rate"] = finite(overall.get("raw"))
            elif r.attack == "gcg":
                out["gcg.asr"] = finite(r.metrics.get("asr"))
            elif r.attack == "membership":
                row = next((x for x in r.metrics.get("tpr_at_fpr", []) if abs(x["fpr"] - 0.01) < 1e-12), {})
                out["membership.tpr_at_1pct_fpr"] = finite(row.get("tpr"))
        return out
