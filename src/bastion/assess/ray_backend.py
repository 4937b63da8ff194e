"""Ray backend: every job is a Ray task (GPU-backed when the cluster has GPUs and the job wants one), and so is
every reference model of a membership attack (`ray_references`).

Jobs are pure functions of (inputs, job, plan table, seed), so a Ray run gives the same findings as a local one.
The model file travels through Ray's object store (workers on other machines need not share a file system);
jobs marked `local` (file scans) run in the driver process meanwhile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.assess.plan import Plan
from bastion.core.errors import BastionError
from bastion.families.base import Job, JobOutcome
from bastion.families.inputs import Inputs


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BastionError("--backend ray needs Ray: pip install 'bastion-ml[ray]'") from None
    return ray


def _task(inputs: Inputs, job: dict[str, Any], section: dict[str, Any], seed: int,
          gpu_fraction: float, run_sandboxed: Callable[..., JobOutcome | None] | None = None) -> dict[str, Any]:
    """What a Ray worker runs: one job (its reference models as further tasks), returned as a plain dictionary.
    With `run_sandboxed` (injected by the CLI) a model that carries code runs inside a sandbox on the worker."""
    from bastion.assess.ray_references import references_on_ray
    from bastion.assess.runner import execute_job

    if run_sandboxed is not None:
        outcome = run_sandboxed(inputs, Job.from_dict(job), section, seed)
        if outcome is not None:
            return outcome.to_dict()
    with references_on_ray(gpu_fraction):
        return execute_job(inputs, Job.from_dict(job), section, seed).to_dict()


class RayBackend:
    """Runs jobs as Ray tasks. Starts a local Ray instance when none is running (and stops it afterwards);
    connects to `address` when given. `gpu_fraction` of a GPU per GPU-backed job lets small jobs share one."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, gpu_fraction: float = 0.25,
                 describe: Callable[[Inputs], dict[str, Any]] | None = None,
                 run_sandboxed: Callable[..., JobOutcome | None] | None = None):
        self.address, self.num_cpus, self.gpu_fraction = address, num_cpus, float(gpu_fraction)
        self.describe = describe  # how the model's code runs, for the report
        self.run_sandboxed = run_sandboxed  # jobs on models that carry code run sandboxed on the workers

    def isolation(self, inputs: Inputs) -> dict[str, Any]:
        from bastion.assess.runner import NOT_SANDBOXED

        return self.describe(inputs) if self.describe is not None else dict(NOT_SANDBOXED)

    def _shipped(self, inputs: Inputs) -> Inputs:
        """Inputs with the model's bytes attached, so that any worker can load it."""
        path = Path(inputs.model)
        if "://" in inputs.model or not path.is_file():
            return inputs
        return dataclasses.replace(inputs, model_bytes=path.read_bytes())

    def run(self, inputs: Inputs, jobs: list[Job], plan: Plan, on_done: Any) -> None:
        from bastion.assess.runner import execute_job

        ray = _ray()
        started = False
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, num_cpus=None if self.address else self.num_cpus,
                         include_dashboard=False, log_to_driver=False, configure_logging=False)
            except Exception as exc:  # noqa: BLE001 - connection problems become one clear line
                raise BastionError(f"cannot start or reach Ray{f' at {self.address}' if self.address else ''}: "
                                   f"{exc}") from None
            started = True
        try:
            gpus = float(ray.cluster_resources().get("GPU", 0))
            remote = ray.remote(_task)
            shared = ray.put(self._shipped(inputs))
            pending = {}
            for job in (j for j in jobs if not j.local):
                options = {"num_cpus": 1, "num_gpus": self.gpu_fraction if job.gpu and gpus else 0,
                           "max_retries": 0}
                ref = remote.options(**options).remote(shared, job.to_dict(), plan.section(job.family), plan.seed,
                                                       self.gpu_fraction, self.run_sandboxed)
                pending[ref] = job
            for job in (j for j in jobs if j.local):
                on_done(execute_job(inputs, job, plan.section(job.family), plan.seed))
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ready[0])
                try:
                    outcome = JobOutcome.from_dict(ray.get(ready[0]))
                except Exception as exc:  # noqa: BLE001 - a dead worker is a failed job, not a dead run
                    outcome = JobOutcome(job.key, job.family, job.name, "error",
                                         error=f"Ray task failed: {type(exc).__name__}")
                on_done(outcome)
        except KeyboardInterrupt:
            for ref in list(locals().get("pending", {})):
                ray.cancel(ref, force=True)
            raise
        finally:
            if started:
                ray.shutdown()
