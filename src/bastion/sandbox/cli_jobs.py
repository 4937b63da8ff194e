"""The sandboxed bodies of `bastion attack`, `bastion defend` and `bastion scan --dynamic`."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from bastion.core.data import Dataset
from bastion.core.errors import BastionError, ParameterError
from bastion.core.results import Finding, Result
from bastion.sandbox.sandboxed_run import SandboxOptions, SandboxRun, open_sandbox, run_job
from bastion.sandbox.session import Sandbox
from bastion.sandbox.spec import JobSpec

NO_SANDBOX_HELP = "run the model's code in this process (no isolation, no dynamic analysis)"
TIMEOUT_HELP = "wall-clock deadline in seconds for the job (and for loading the model); exit 2 past it"


def no_sandbox_option() -> Any:
    return typer.Option(False, "--no-sandbox", help=NO_SANDBOX_HELP)


def timeout_option() -> Any:
    return typer.Option(None, "--timeout", help=TIMEOUT_HELP)


def path_arguments(args: list[str]) -> list[str]:
    """Values of `--param value` pairs that name existing files, or items of comma-separated lists that do (the
    worker gets read-only access to them)."""
    values = [a.partition("=")[2] or a for a in args]
    return [v for value in values for v in ([value] if Path(value).exists() else value.split(",")) if Path(v).exists()]


def checked_result(data: dict[str, Any]) -> Result:
    """An Result from a worker's JSON, with its types checked (the worker's output is untrusted)."""
    try:
        result = Result.from_dict(data)
        ok = (isinstance(result.family, str) and isinstance(result.attack, str) and isinstance(result.params, dict)
              and isinstance(result.metrics, dict) and isinstance(result.queries, int)
              and isinstance(result.seconds, (int, float)) and isinstance(result.findings, list)
              and all(isinstance(f, Finding) for f in result.findings))
    except (TypeError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise BastionError("the sandboxed job returned a malformed result")
    return result


def _finish(run: SandboxRun, options: SandboxOptions) -> Result:
    run.raise_error()
    result = checked_result(run.result)
    result.findings += run.findings
    result.metrics["sandbox"] = {**run.describe(), "no_sandbox": not options.enabled}
    return result


Locate = Callable[[JobSpec], None]


def _start(spec: JobSpec, load: dict[str, Any], options: SandboxOptions, job: str, locate: Locate | None = None
           ) -> tuple[Sandbox | None, Dataset | None, Dataset | None]:
    """Start the worker first (it imports PyTorch meanwhile); then, here, `locate` the spec's class (the CLI reads
    the registry's source: an unknown name is its one-line error), check the spec and load `--data` and
    `--train-data`. Any error stops the worker."""
    sandbox = open_sandbox(str(load["path"]), load.get("arch"), options, spec.readable(), job=job)
    try:
        if locate is not None:
            locate(spec)
        spec.check()
        evaluation, training = spec.load_data()
    except BaseException:
        if sandbox is not None:
            sandbox.abort()
        raise
    return sandbox, evaluation, training


def sandboxed_attack(spec: JobSpec, load: dict[str, Any], options: SandboxOptions, locate: Locate | None = None
                     ) -> Result:
    """Build and run the attack of `spec` on the model of `load` (keyword arguments of `load_target`, without
    data): inside one sandboxed worker when the model carries code, else in this process."""
    sandbox, evaluation, _ = _start(spec, load, options, "attack", locate)
    payload: dict[str, Any] = {"spec": spec, "evaluation": evaluation, "load": load}
    if options.timeout is not None:  # the attack stops itself before the sandbox's hard deadline and keeps results
        payload.update(deadline=time.time() + soft_deadline(options.timeout), seconds=options.timeout)
    run = run_job(sandbox, "attack", payload)
    return _finish(run, options)


def soft_deadline(timeout: float) -> float:
    """Seconds after which an attack stops querying, leaving time within `timeout` to score and send its result."""
    return timeout - min(max(1.0, 0.1 * timeout), 0.5 * timeout)


def sandboxed_defense(spec: JobSpec, load: dict[str, Any], options: SandboxOptions, out: Path | None,
                      locate: Locate | None = None) -> Result:
    """Build and run the defense of `spec` in one worker; a saved model leaves scratch for `out`."""
    sandbox, evaluation, training = _start(spec, load, options, "defend", locate)
    out = None if out is None else Path(out).absolute()
    payload = {"spec": spec, "evaluation": evaluation, "training": training, "load": load,
               "out_name": None if out is None else out.name}
    run = run_job(sandbox, "defend", payload, out_dir=None if out is None else out.parent)
    result = _finish(run, options)
    if out is not None:
        result.metrics["saved_to"] = str(out)
    return result


def dynamic_scan(model: str, arch: str | None, data: Dataset | None, options: SandboxOptions) -> Result:
    """`bastion scan --dynamic`: load MODEL in the sandbox, run a forward pass on inputs of its declared shape,
    and report what its code tried to do."""
    from bastion.sandbox.policy import carries_code

    if not options.enabled:
        raise ParameterError("--dynamic observes the model inside the sandbox; it cannot run with --no-sandbox")
    if not carries_code(model, arch):
        raise ParameterError(f"{model}: nothing to observe (an HTTP endpoint or an unknown format)")
    start = time.perf_counter()
    sandbox = open_sandbox(model, arch, options)
    assert sandbox is not None
    # observing is the point: a model the static checks refuse is loaded here, inside the sandbox, all the same;
    # never in the fallback, which isolates nothing
    isolated = sandbox.isolation.startswith("bubblewrap")
    load = {"path": model, "arch": arch, "data": data, "device": options.device, "trust": isolated}
    run = run_job(sandbox, "probe", {"load": load})
    if run.error is not None and "deadline" in run.error:
        run.raise_error()
    metrics: dict[str, Any] = {"sandbox": run.describe(), "observed": True}
    if run.error is None:
        metrics["probe"] = run.result
    else:
        metrics["probe_error"] = run.error
    return Result(family="supply_chain", attack="dynamic", params={"model": model, "arch": arch},
                        metrics=metrics, seconds=time.perf_counter() - start, findings=run.findings)
