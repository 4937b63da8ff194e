"""The probe contract: one probe per threat family turns its plan table into jobs and their results into findings.

A probe is the only place that knows its family's attack API, so an API change touches one probe module:

- `applicable(inputs, info)` says why the family cannot run on these inputs (or None);
- `jobs(inputs, info)` lists independent jobs (one attack, one shard of samples, one scanner...);
- `execute(inputs, job)` runs one job anywhere (this process or a Ray worker) and returns an Result;
- `conclude(inputs, info, outcomes)` judges the results: findings, sanity checks, headline metrics, grade.

A job is a pure function of the inputs, the plan and the seed, so both backends give the same findings.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from bastion.assess.inputs import Inputs, ModelInfo
from bastion.assess.scoring import family_grade
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.registry import get
from bastion.core.results import Finding, Result, Serializable
from bastion.core.training import seed_everything


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
    status: str  # done | error
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


class Probe(ABC):
    """Base class: subclasses set `family`, `title` and implement the four methods."""

    family: ClassVar[str] = ""
    title: ClassVar[str] = ""

    def __init__(self, section: dict[str, Any], seed: int = 0):
        self.section, self.seed = section, int(seed)

    def applicable(self, inputs: Inputs, info: ModelInfo) -> str | None:
        return None

    @abstractmethod
    def jobs(self, inputs: Inputs, info: ModelInfo) -> list[Job]:  # pragma: no cover - abstract
        ...

    @abstractmethod
    def execute(self, inputs: Inputs, job: Job) -> Result:  # pragma: no cover - abstract
        ...

    @abstractmethod
    def conclude(self, inputs: Inputs, info: ModelInfo, outcomes: list[JobOutcome]) -> FamilyReport:
        ...

    # -- helpers shared by the probes ---------------------------------------------------------------------
    def job(self, key: str, name: str, params: dict[str, Any], data: dict[str, Any], gpu: bool = False) -> Job:
        return Job(key=f"{self.family}/{key}", family=self.family, name=name, params=params, data=data, gpu=gpu)

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
            results = [o.result for o in outcomes if o.status == "done" and o.result is not None]
        errors = [f"{o.key}: {o.error}" for o in outcomes if o.status != "done"]
        if errors and status == "assessed":
            status = "partial" if results else "failed"
        if status in ("partial", "failed"):  # never a letter for half a family (assess/scoring.py)
            kwargs["grade"] = family_grade([], status)
            failed = f"{len(errors)} job(s) failed, first {errors[0]}" if errors else "a job failed"
            reason = f"{reason}; {failed}" if reason else failed
        return FamilyReport(family=self.family, title=self.title, status=status, reason=reason, results=results,
                            errors=errors, seconds=sum(o.seconds for o in outcomes), **kwargs)


def probe_for(family: str, section: dict[str, Any], seed: int) -> Probe:
    """The registered probe of `family`, configured with its plan table."""
    return get("probes", family, family)(section, seed)


def done(outcomes: list[JobOutcome]) -> list[tuple[JobOutcome, Result]]:
    """The finished jobs with their results."""
    return [(o, o.result) for o in outcomes if o.status == "done" and o.result is not None]
