"""The family plug-in contract: one `Family` per threat family owns everything `bastion assess` knows about it.

A family is registered with `@register("families", NAME)` and declares, as class attributes, its `name`, `title`,
MITRE ATLAS and OWASP ids, its plan `schema` (`Key`s; `bastion.assess.plan` and docs/plan.md read them from the
registry), its standard `mitigations` and the report `plots` it wants. Its methods:

- `defaults(inputs, info, device, seed)` (class method): the family's default plan table, sized for the device
  that will run it (decided before the plan is built);
- `applicable(inputs, info)` says why the family cannot run on these inputs (or None);
- `jobs(inputs, info)` lists independent jobs (one attack, one shard of samples, one scanner...);
- `execute(inputs, job)` runs one job anywhere (this process or a Ray worker) and returns the attack's `Result`
  (measurements only);
- `merge(groups)` turns the results of one job group (e.g. the shards of an attack) into one `Result`;
- `judge(results)` turns measured results into findings (severity thresholds, ATLAS/OWASP ids);
- `sanity(inputs, info, results)` checks the family's numbers;
- `conclude(inputs, info, outcomes)` assembles the family's report: findings, sanity checks, headline, grade.

A job is a pure function of the inputs, the plan and the seed, so both backends give the same findings.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.registry import entries, get
from bastion.core.results import Finding, Result, Serializable
from bastion.core.training import seed_everything
from bastion.families.defense_verdicts import defense_findings
from bastion.families.grading import family_grade, grade_of
from bastion.families.inputs import Inputs, ModelInfo


@dataclass(frozen=True)
class Key:
    """One plan key: its kind, a one-line description (docs/plan.md), and its valid range."""

    kind: str  # bool, int, float, str, floats, ints, strs, attacks
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    exclusive_min: bool = False


ENABLED = Key("bool", "run this family")


@dataclass
class Job(Serializable):
    """One independent unit of work. `data` maps a dataset role to (source, row indices); `gpu`: wants a GPU
    when the backend has one; `local`: must run in the driver process (it reads local files)."""

    key: str
    family: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    gpu: bool = False
    local: bool = False

    @property
    def seed_offset(self) -> int:
        return zlib.crc32(self.key.encode())


@dataclass
class JobOutcome(Serializable):
    """A job's result or its error (one line)."""

    _nested: ClassVar[dict[str, type]] = {"result": Result}

    key: str
    family: str
    name: str
    status: str  # done | partial (a budget or deadline stopped it; `result` holds what it measured) | error
    result: Result | None = None
    error: str = ""
    seconds: float = 0.0


@dataclass
class SanityCheck(Serializable):
    """One automatic check of a family's numbers (a failure means they may be too optimistic)."""

    name: str
    passed: bool
    detail: str
    family: str = "evasion"


@dataclass
class FamilyReport(Serializable):
    """Everything the report shows about one family."""

    _nested: ClassVar[dict[str, type]] = {"findings": Finding, "sanity": SanityCheck, "results": Result}

    family: str
    title: str
    status: str  # assessed | partial | skipped | failed
    reason: str = ""
    grade: str = "N/A"
    findings: list[Finding] = field(default_factory=list)
    sanity: list[SanityCheck] = field(default_factory=list)
    headline: dict[str, float] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def select(inputs: Inputs, source: str, rows: list[int] | None) -> Dataset:
    """The dataset `source` ("data" or "train") restricted to `rows` (all rows when None)."""
    base = inputs.data if source == "data" else inputs.train_data
    if base is None:
        raise ParameterError(f"this job needs the {source} dataset")
    return base if rows is None else base.subset(np.asarray(rows, dtype=np.int64))


def sample_rows(n_total: int, n: int, seed: int, salt: int = 0) -> np.ndarray:
    """A seeded random choice of min(n, n_total) row indices, sorted."""
    rng = np.random.default_rng([seed, salt])
    return np.sort(rng.permutation(n_total)[: min(n, n_total)])


class Family(ABC):
    """Base class of the threat-family plug-ins (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    order: ClassVar[int] = 100  # position in plans and reports
    kinds: ClassVar[tuple[str, ...]] = ("classifier",)  # the models it assesses (`ModelInfo.kind`)
    atlas: ClassVar[tuple[str, ...]] = ()
    owasp: ClassVar[tuple[str, ...]] = ()
    schema: ClassVar[dict[str, Key]] = {"enabled": ENABLED}
    # Where the names of an `attacks`-kind key live in the registry: (kind, registry family), and the parameters
    # the family sets itself (a plan may not set them).
    sources: ClassVar[dict[str, tuple[str, str]]] = {}
    injected: ClassVar[tuple[str, ...]] = ("seed",)
    mitigations: ClassVar[tuple[str, ...]] = ()
    plots: ClassVar[tuple[str, ...]] = ()  # names of `bastion.report.plots` figures, in order
    sections: ClassVar[tuple[str, ...]] = ()  # extra report sections (`bastion.report.llm_section`: "llm_probes")

    def __init__(self, section: dict[str, Any], seed: int = 0):
        self.section, self.seed = section, int(seed)

    @classmethod
    @abstractmethod
    def defaults(cls, inputs: Inputs, info: ModelInfo, device: str, seed: int = 0) -> dict[str, Any]:
        """The default plan table for these inputs on `device` (cpu, cuda or cuda:N: already decided) and the
        plan's seed."""  # pragma: no cover - abstract

    def applicable(self, inputs: Inputs, info: ModelInfo) -> str | None:
        return None

    @abstractmethod
    def jobs(self, inputs: Inputs, info: ModelInfo) -> list[Job]:  # pragma: no cover - abstract
        ...

    @abstractmethod
    def execute(self, inputs: Inputs, job: Job) -> Result:  # pragma: no cover - abstract
        ...

    def merge(self, name: str, results: list[Result]) -> Result:
        """One result from a group of jobs (the default: the group's only result)."""
        return results[0]

    def judge(self, results: list[Result]) -> list[Finding]:
        """Findings from measured results (the default: the findings the measurements carry)."""
        return [f for r in results for f in r.findings]

    def sanity(self, inputs: Inputs, info: ModelInfo, results: list[Result]) -> list[SanityCheck]:
        """Checks of the family's numbers (the default: none)."""
        return []

    def sanity_finding(self, check: SanityCheck) -> Finding:
        """The finding of a failed sanity check."""
        return Finding(title=f"sanity check '{check.name}' failed: the {self.name} figures may be too optimistic",
                       family=self.name, severity="low", metric=f"sanity:{check.name}",
                       evidence={"check": check.name, "detail": check.detail}, atlas=list(self.atlas),
                       owasp=list(self.owasp), description=check.detail)

    def headline(self, results: list[Result]) -> dict[str, float]:
        """The family's headline numbers (the default: none)."""
        return {}

    def conclude(self, inputs: Inputs, info: ModelInfo, outcomes: list[JobOutcome]) -> FamilyReport:
        """Merge, check, judge: the family's report."""
        groups: dict[str, list[Result]] = {}
        names: dict[str, str] = {}
        for outcome, result in done(outcomes):
            group = outcome.key.split("/")[1]
            groups.setdefault(group, []).append(result)
            names[group] = outcome.name
        results = [self.merge(names[g], rs) for g, rs in groups.items()]
        checks = self.sanity(inputs, info, results)
        findings = self.judge(results) + [self.sanity_finding(c) for c in checks if not c.passed]
        return self.report("assessed", outcomes, findings=findings, sanity=checks, headline=self.headline(results),
                           grade=grade_of(findings), results=results)

    # -- helpers shared by the families -------------------------------------------------------------------
    def job(self, key: str, name: str, params: dict[str, Any], data: dict[str, Any], gpu: bool = False) -> Job:
        return Job(key=f"{self.name}/{key}", family=self.name, name=name, params=params, data=data, gpu=gpu)

    def run_job(self, inputs: Inputs, job: Job) -> Result:
        """Seed every generator from (seed, job key), then execute: the same job gives the same result anywhere."""
        seed_everything((self.seed + job.seed_offset) % 2**31)
        result = self.execute(inputs, job)
        for finding in result.findings:
            finding.evidence.setdefault("attack", result.attack)
        result.params.setdefault("job", job.key)
        return result

    def report(self, status: str, outcomes: list[JobOutcome], reason: str = "",
               results: list[Result] | None = None, **kwargs: Any) -> FamilyReport:
        """The family's report; `results` defaults to the finished jobs' results."""
        if results is None:
            results = [r for _, r in done(outcomes)]
        errors = [f"{o.key}: {o.error}" for o in outcomes if o.status == "error"]
        stopped = [o.key for o in outcomes if o.status == "partial"]
        if (errors or stopped) and status == "assessed":
            status = "partial" if results else "failed"
        if status in ("partial", "failed"):  # never a letter for half a family (families/grading.py)
            kwargs["grade"] = family_grade([], status)
            why = [f"{len(errors)} job(s) failed, first {errors[0]}"] if errors else []
            why += [f"{len(stopped)} job(s) stopped by a budget or deadline ({', '.join(stopped)}); "
                    "resume the run to complete them"] if stopped else []
            failed = "; ".join(why) or "a job failed"
            reason = f"{reason}; {failed}" if reason else failed
        return FamilyReport(family=self.name, title=self.title, status=status, reason=reason, results=results,
                            errors=errors, seconds=sum(o.seconds for o in outcomes), **kwargs)


def not_for(family: type[Family], info: ModelInfo) -> str | None:
    """Why `family` cannot assess this kind of model (None when it can)."""
    if info.kind in family.kinds:
        return None
    what = {"language-model": "a language model", "classifier": "not a language model"}.get(info.kind, info.kind)
    return f"not applicable: {what}"


def registered(kind: str, family: str, name: str) -> bool:
    """Whether `name` is registered as a `kind` of registry family `family` (defaults offer only what exists)."""
    return any(e["name"] == name for e in entries(kind, family))


def registry() -> dict[str, type[Family]]:
    """Every registered family, by name, in plan and report order: the single source of truth."""
    classes = [e["cls"] for e in entries("families")]
    return {c.name: c for c in sorted(classes, key=lambda c: (c.order, c.name))}


def get_family(name: str) -> type[Family]:
    """The registered family `name`."""
    return get("families", name)


def judged(result: Result) -> Result:
    """The result with the findings its threat family judges from its measurements (attacks, detectors and
    defenses only measure); a hardening, repair, certification or training defense's result (family "defense")
    is judged by `bastion.families.defense_verdicts`; a result of no registered family keeps its own findings."""
    if result.family == "defense":
        result.findings = defense_findings(result)
        return result
    family = registry().get(result.family)
    if family is not None:
        result.findings = family({}, 0).judge([result])
    return result


def family_for(name: str, section: dict[str, Any], seed: int) -> Family:
    """The registered family `name`, configured with its plan table."""
    return get_family(name)(section, seed)


def done(outcomes: list[JobOutcome]) -> list[tuple[JobOutcome, Result]]:
    """The jobs that measured something (finished, or stopped partway by a budget), with their results."""
    return [(o, o.result) for o in outcomes if o.status in ("done", "partial") and o.result is not None]
