"""Run an assessment: plan the jobs of every family, execute them (locally or on Ray), judge, record.

Every finished job is written to the run store at once, so an interrupted assessment keeps its finished jobs and
`resume` runs only what is missing (jobs that failed are retried).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from rich.console import Console

from bastion.assess.assessment import Assessment, environment
from bastion.assess.plan import Plan, family_names
from bastion.core.clock import new_run_id, now
from bastion.core.errors import BastionError
from bastion.core.progress import progress
from bastion.families.base import Family, FamilyReport, Job, JobOutcome, family_for, get_family, not_for
from bastion.families.grading import overall_grade
from bastion.families.inputs import Inputs, ModelInfo, one_line

OnDone = Callable[[JobOutcome], None]


def execute_job(inputs: Inputs, job: Job, section: dict[str, Any], seed: int) -> JobOutcome:
    """Run one job and capture its result or its error (never raises, except on interruption)."""
    start = time.perf_counter()
    try:
        result = family_for(job.family, section, seed).run_job(inputs, job)
    except BastionError as exc:
        return JobOutcome(job.key, job.family, job.name, "error", error=one_line(exc),
                          seconds=time.perf_counter() - start)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        if os.environ.get("BASTION_DEBUG"):
            raise
        return JobOutcome(job.key, job.family, job.name, "error",
                          error=f"internal error {type(exc).__name__}: {one_line(exc)}",
                          seconds=time.perf_counter() - start)
    status = "partial" if getattr(result, "status", "complete") == "partial" else "done"  # a budget stopped it
    return JobOutcome(job.key, job.family, job.name, status, result=result, seconds=time.perf_counter() - start)


# How the model's code ran, for the report's reproducibility section, when the backend cannot say (the API).
NOT_SANDBOXED = {"sandboxed": False, "no_sandbox": False, "reason": "no model code to run"}
Isolation = Callable[[Inputs], dict[str, Any]]


class Backend(Protocol):
    name: str

    def run(self, inputs: Inputs, jobs: list[Job], plan: Plan, on_done: OnDone) -> None: ...

    def isolation(self, inputs: Inputs) -> dict[str, Any]: ...


class RunRecorder(Protocol):
    """Where a run is recorded as its jobs finish (`bastion.store.RunStore`; injected, None records nothing)."""

    def create_run(self, run_id: str, inputs: dict[str, Any], plan: dict[str, Any], model_sha256: str | None,
                   backend: str, seed: int) -> None: ...

    def save_job(self, run_id: str, outcome: JobOutcome) -> None: ...

    def set_status(self, run_id: str, status: str) -> None: ...

    def finish(self, assessment: Assessment) -> None: ...

    def run(self, run_ref: str) -> dict[str, Any]: ...

    def outcomes(self, run_ref: str, decode: Callable[[str], JobOutcome]) -> dict[str, JobOutcome]: ...


class LocalBackend:
    """Jobs one after another in this process. `describe` (injected by the CLI, which knows the sandbox options)
    says how the model's code ran, for the report."""

    name = "local"

    def __init__(self, describe: Isolation | None = None):
        self.describe = describe

    def isolation(self, inputs: Inputs) -> dict[str, Any]:
        return self.describe(inputs) if self.describe is not None else dict(NOT_SANDBOXED)

    def run(self, inputs: Inputs, jobs: list[Job], plan: Plan, on_done: OnDone) -> None:
        for job in jobs:
            on_done(execute_job(inputs, job, plan.section(job.family), plan.seed))


def make_backend(name: str, address: str | None = None, describe: Isolation | None = None,
                 run_sandboxed: Callable[..., JobOutcome | None] | None = None) -> Backend:
    """The backend `name` (local or ray). Injected by the CLI: `describe`, how the model's code runs (for the
    report), and `run_sandboxed(inputs, job, section, seed)`, the sandboxed job runner of Ray workers (the local
    backend's sandbox is the CLI's `SandboxBackend`)."""
    if name == "local":
        if address:
            raise BastionError("--address is only used with --backend ray")
        return LocalBackend(describe)
    if name == "ray":
        from bastion.assess.ray_backend import RayBackend

        return RayBackend(address=address, describe=describe, run_sandboxed=run_sandboxed)
    raise BastionError(f"unknown backend {name!r}: use local or ray")


def plan_jobs(inputs: Inputs, info: ModelInfo, plan: Plan) -> tuple[dict[str, Family], dict[str, str], list[Job]]:
    """The enabled families, the reasons families are skipped, and every job (errors come early)."""
    plugins = {fam: family_for(fam, plan.section(fam), plan.seed) for fam in family_names()
               if plan.enabled(fam) and not_for(get_family(fam), info) is None}
    skipped = {fam: reason for fam, p in plugins.items() if (reason := p.applicable(inputs, info))}
    jobs = [j for fam, p in plugins.items() if fam not in skipped for j in p.jobs(inputs, info)]
    return plugins, skipped, jobs


def isolation_of(backend: Any, inputs: Inputs) -> dict[str, Any]:
    """How the model's code ran under `backend` (for the reproducibility section)."""
    describe = getattr(backend, "isolation", None)
    return describe(inputs) if describe is not None else dict(NOT_SANDBOXED)


def _skipped(fam: str, reason: str) -> FamilyReport:
    return FamilyReport(family=fam, title=get_family(fam).title, status="skipped", reason=reason)


class Runner:
    """Plans, executes and records one assessment."""

    def __init__(self, store: RunRecorder | None = None, backend: Backend | None = None,
                 console: Console | None = None, show_progress: bool = True):
        self.store, self.backend = store, backend or LocalBackend()
        self.console = console or Console(stderr=True, quiet=not show_progress)
        self.show_progress = show_progress

    def run(self, inputs: Inputs, plan: Plan, run_id: str | None = None, resume: bool = False,
            info: ModelInfo | None = None) -> Assessment:
        started = time.perf_counter()
        info = info or inputs.describe()
        plugins, skipped, jobs = plan_jobs(inputs, info, plan)
        run_id = run_id or new_run_id()
        created, previous = now(), {}
        if self.store is not None:
            if resume:
                stored = self.store.outcomes(run_id, JobOutcome.from_json)
                previous = {k: o for k, o in stored.items() if o.status == "done"}
                created = self.store.run(run_id)["created"]
                self.store.set_status(run_id, "running")
            else:
                self.store.create_run(run_id, inputs.summary(), plan.to_dict(), info.sha256, self.backend.name,
                                      plan.seed)
        outcomes: dict[str, JobOutcome] = dict(previous)
        pending = [j for j in jobs if j.key not in previous]
        if previous:
            self.console.print(f"resuming run {run_id}: {len(previous)} job(s) already done, {len(pending)} to go")
        try:
            with progress(len(pending), f"assessing {info.name}", enabled=self.show_progress) as bar:
                def on_done(outcome: JobOutcome) -> None:
                    outcomes[outcome.key] = outcome
                    if self.store is not None:
                        self.store.save_job(run_id, outcome)
                    mark = outcome.status if outcome.status != "error" else f"error: {outcome.error}"
                    self.console.print(f"  {outcome.key}  {outcome.seconds:.1f} s  {mark}")
                    bar.advance()

                self.backend.run(inputs, pending, plan, on_done)
        except KeyboardInterrupt:
            if self.store is not None:
                self.store.set_status(run_id, "interrupted")
                self.console.print(f"interrupted: {len(outcomes)} job(s) kept; resume with "
                                   f"`bastion assess --resume {run_id}`")
            raise
        families = []
        for fam in family_names():
            if fam not in plugins:
                families.append(_skipped(fam, not_for(get_family(fam), info) or "disabled in the plan"))
            elif fam in skipped:
                families.append(_skipped(fam, skipped[fam]))
            else:
                mine = [outcomes[j.key] for j in jobs if j.family == fam]
                families.append(plugins[fam].conclude(inputs, info, mine))
        assessment = Assessment(
            run_id=run_id, created=created, status="complete", model=vars(info).copy(), inputs=inputs.summary(),
            plan=plan.to_dict(), environment={**environment(self.backend.name), "sandbox": isolation_of(
                self.backend, inputs)}, seed=plan.seed,
            backend=self.backend.name, families=families, grade=overall_grade(f.grade for f in families),
            finished=now(), seconds=time.perf_counter() - started + sum(o.seconds for o in previous.values()))
        if self.store is not None:
            self.store.finish(assessment)
        return assessment


def assess(inputs: Inputs, plan: Plan, store: RunRecorder | None = None, backend: str = "local",
           address: str | None = None, show_progress: bool = False) -> Assessment:
    """One call: run every family of `plan` on `inputs` and return the Assessment."""
    return Runner(store, make_backend(backend, address), show_progress=show_progress).run(inputs, plan)
