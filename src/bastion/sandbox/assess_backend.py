"""`bastion assess` in the sandbox: the model is described, and every job run, inside one worker per model.

Each JobOutcome comes back as a JSON line and is recorded at once; the supply-chain family's `dynamic` job is held
until the worker has stopped, then carries what the model was seen doing during the whole session (load,
description and every job's forward passes).
"""

from __future__ import annotations

import os
import time
from typing import Any

from bastion.assess.plan import Plan
from bastion.core.errors import BastionError
from bastion.core.results import Finding, Result
from bastion.families.base import Job, JobOutcome
from bastion.families.inputs import Inputs, ModelInfo
from bastion.sandbox.policy import carries_code
from bastion.sandbox.sandboxed_run import SandboxOptions, open_sandbox
from bastion.sandbox.session import Sandbox

DYNAMIC_KEY = "supply_chain/dynamic"


def describe(sandbox: Sandbox, inputs: Inputs) -> ModelInfo:
    """`inputs.describe()` run in the sandbox (loading the model runs its code)."""
    try:
        messages = list(sandbox.request("describe", inputs=inputs))  # read to its end before the next request
        data = next(m["data"] for m in messages if m["type"] == "result")
        return ModelInfo(**{k: data[k] for k in ModelInfo.__dataclass_fields__})
    except BastionError as exc:
        findings = sandbox.close().findings()
        seen = f" (the sandbox also saw: {findings[0].title})" if findings else ""
        raise BastionError(f"{exc}{seen}") from None
    except (KeyError, TypeError, StopIteration):
        sandbox.close()
        raise BastionError("the sandboxed worker returned a malformed model description") from None


def _outcome(data: dict[str, Any]) -> JobOutcome:
    outcome = JobOutcome.from_dict(data)
    if not isinstance(outcome.key, str) or outcome.status not in ("done", "partial", "error") or (
            outcome.result is not None and not isinstance(outcome.result, Result)):
        raise BastionError("the sandboxed worker returned a malformed job outcome")
    return outcome


def observed(outcome: JobOutcome | None, job: Job, findings: list[Finding], info: dict[str, Any],
             error: str | None) -> JobOutcome:
    """The dynamic job's outcome with what the sandbox observed (also when the job itself failed)."""
    if outcome is None or outcome.result is None:
        result = Result(family="supply_chain", attack="dynamic", params={"job": job.key},
                              metrics={"files": [], "errors": [], "probe_error": error or "not run"})
        outcome = JobOutcome(job.key, job.family, job.name, "done", result=result)
    outcome.result.metrics.update(observed=True, sandbox=info)
    outcome.result.findings += findings
    return outcome


def run_in_sandbox(sandbox: Sandbox, inputs: Inputs, jobs: list[Job], plan: Any, on_done: Any) -> None:
    """Run `jobs` in `sandbox` (then stop it); call `on_done` with each outcome as soon as it arrives."""
    sections = {j.family: plan.section(j.family) for j in jobs}
    by_key = {j.key: j for j in jobs}
    dynamic = by_key.get(DYNAMIC_KEY)
    held: JobOutcome | None = None
    finished: set[str] = set()
    error = None
    start = time.perf_counter()
    try:
        for message in sandbox.request("jobs", inputs=inputs, jobs=jobs, sections=sections, seed=plan.seed):
            if message["type"] != "outcome":
                continue
            outcome = _outcome(message["data"])
            if outcome.key not in by_key or outcome.key in finished:
                raise BastionError("the sandboxed worker returned an outcome for no pending job")
            finished.add(outcome.key)
            if outcome.key == DYNAMIC_KEY:
                held = outcome
            else:
                on_done(outcome)
    except BastionError as exc:
        error = str(exc)
    info = {"isolation": sandbox.isolation, "observer": sandbox.observer}
    observation = sandbox.close()
    for job in jobs:
        if job.key not in finished and job.key != DYNAMIC_KEY:
            on_done(JobOutcome(job.key, job.family, job.name, "error", error=f"sandbox: {error}",
                               seconds=time.perf_counter() - start))
    if dynamic is not None:
        on_done(observed(held, dynamic, observation.findings(), {**info, "observer": observation.observer},
                         error))


class SandboxBackend:
    """The local backend with every model job inside one sandboxed worker (file scans stay in this process)."""

    name = "local"

    def __init__(self, sandbox: Sandbox, options: SandboxOptions):
        self.sandbox, self.options = sandbox, options

    def isolation(self, inputs: Inputs) -> dict[str, Any]:
        return isolation(self.options, inputs)

    def run(self, inputs: Inputs, jobs: list[Job], plan: Plan, on_done: Any) -> None:
        from bastion.assess.runner import execute_job

        for job in (j for j in jobs if j.local):
            on_done(execute_job(inputs, job, plan.section(job.family), plan.seed))
        remote = [j for j in jobs if not j.local]
        if remote:
            run_in_sandbox(self.sandbox.start(), inputs, remote, plan, on_done)
        else:
            self.sandbox.close()


def run_job_sandboxed(inputs: Inputs, job: Job, section: dict[str, Any], seed: int,
                      options: SandboxOptions) -> JobOutcome | None:
    """One job in a fresh sandbox (what a Ray worker runs); None when the model needs no sandbox."""
    sandbox = open_sandbox(inputs.model_path(), inputs.arch, options)
    if sandbox is None:
        return None
    outcomes: list[JobOutcome] = []
    run_in_sandbox(sandbox, inputs, [job], _OnePlan(job.family, section, seed), outcomes.append)
    return outcomes[0]


class _OnePlan:
    """The part of a Plan that `run_in_sandbox` reads, for one job."""

    def __init__(self, family: str, section: dict[str, Any], seed: int):
        self.family, self._section, self.seed = family, section, seed

    def section(self, family: str) -> dict[str, Any]:
        return self._section


def isolation(options: SandboxOptions | None, inputs: Inputs) -> dict[str, Any]:
    """How the model's code of `inputs` runs under `options` (the report's reproducibility section): sandboxed
    when the sandbox is on and loading the local model file runs its author's code."""
    sandboxed = bool(options is not None and options.enabled and os.path.isfile(inputs.model)
                     and carries_code(inputs.model, inputs.arch))
    return sandbox_info(options, sandboxed)


def sandbox_info(options: SandboxOptions | None, sandboxed: bool) -> dict[str, Any]:
    """For the report's reproducibility section: whether model code ran sandboxed, and why not."""
    from bastion.sandbox.bwrap import bwrap_problem

    if options is None or not sandboxed:
        reason = "--no-sandbox" if options is not None and not options.enabled else "no model code to run"
        return {"sandboxed": False, "no_sandbox": bool(options is not None and not options.enabled),
                "reason": reason}
    problem = bwrap_problem()
    return {"sandboxed": True, "no_sandbox": False, "fallback": problem is not None,
            "isolation": "subprocess with resource limits (fallback)" if problem else "bubblewrap + seccomp",
            "reason": problem or "", "timeout": options.timeout}


