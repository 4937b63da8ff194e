"""One call for the commands: run a whole job sandboxed when the model carries code, in-process otherwise."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.core.errors import BastionError
from bastion.core.notices import say_once
from bastion.core.results import Finding
from bastion.sandbox.policy import SandboxPolicy, carries_code
from bastion.sandbox.session import Sandbox, SandboxError


@dataclass
class SandboxOptions:
    """The `--no-sandbox` and `--timeout` options of a command."""

    enabled: bool = True
    timeout: float | None = None
    device: str = "auto"

    def policy(self) -> SandboxPolicy:
        return SandboxPolicy(timeout=self.timeout, gpu=_wants_gpu(self.device))


def _wants_gpu(device: str) -> bool:
    """Whether to bind the GPU devices into the sandbox (without importing PyTorch here: the worker decides)."""
    return device != "cpu" and any(Path("/dev").glob("nvidia*"))


@dataclass
class SandboxRun:
    """What came back: the job's messages (data only), the files it saved, and what the model was seen doing."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    isolation: str = "none"
    observer: str = "none"
    error: str | None = None

    @property
    def result(self) -> dict[str, Any]:
        for message in self.messages:
            if message["type"] == "result":
                return message["data"]
        raise SandboxError("the sandboxed job returned no result")

    def describe(self) -> dict[str, Any]:
        """How the job ran, for `metrics["sandbox"]` and the report's reproducibility section."""
        return {"isolation": self.isolation, "observer": self.observer}

    def raise_error(self) -> None:
        """Raise the job's error in one line, naming the worst thing the sandbox saw the model do."""
        if self.error is None:
            return
        seen = f" (the sandbox also saw: {self.findings[0].title})" if self.findings else ""
        raise SandboxError(self.error + seen)


def arch_paths(arch: str | None) -> tuple[list[str], list[str]]:
    """Files the worker must read to import an `--arch module:factory`, and folders to add to its import path."""
    if not arch or ":" not in arch:
        return [], []
    module = arch.rpartition(":")[0]
    if module.endswith(".py"):
        return [str(Path(module).absolute())], []
    top = module.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: found, not executed
    except (ImportError, ValueError):
        return [], []
    if spec is None or not spec.origin or not Path(spec.origin).exists():
        return [], []
    origin = Path(spec.origin).absolute()
    location = origin.parent if spec.submodule_search_locations else origin
    return [str(location)], [str(location.parent)]


def open_sandbox(model: str, arch: str | None, options: SandboxOptions, paths: Iterable[str] = (),
                 job: str = "assess") -> Sandbox | None:
    """A started sandbox for jobs on MODEL, or None when it runs in-process (no code in it, or `--no-sandbox`).

    The worker starts at once and imports what `job` needs (see `jobs.preload`) while the caller prepares it."""
    if not carries_code(model, arch):
        return None
    if not options.enabled:
        say_once("--no-sandbox: the model's code runs inside this process, unisolated and unobserved")
        return None
    files, import_dirs = arch_paths(arch)
    read_only = [str(Path(model).absolute()), *files, *(p for p in paths if p and os.path.exists(p))]
    return Sandbox(options.policy(), read_only + import_dirs, import_path=import_dirs, job=job).start()


def run_job(sandbox: Sandbox | None, kind: str, payload: dict[str, Any], out_dir: Path | None = None,
            close: bool = True) -> SandboxRun:
    """Run the job `kind` (see `bastion.sandbox.jobs.HANDLERS`) in `sandbox`, or in-process when it is None.

    Files the job names are moved to `out_dir`. Errors are kept in `run.error` (see `SandboxRun.raise_error`)
    so that what the sandbox observed is reported even when the job failed."""
    from bastion.sandbox.jobs import HANDLERS

    run = SandboxRun()
    if sandbox is None:
        if kind == "defend" and out_dir is not None:
            payload = {**payload, "out_dir": str(out_dir)}
        run.messages = list(HANDLERS[kind](**payload))
        run.files = {str(m["name"]): Path(out_dir or ".") / str(m["name"]) for m in run.messages
                     if m["type"] == "file"}
        return run
    run.isolation, run.observer = sandbox.isolation, sandbox.observer
    try:
        for message in sandbox.request(kind, **payload):
            if message["type"] == "file":
                if out_dir is None:
                    raise SandboxError("the sandboxed job saved a file nobody asked for")
                run.files[message["name"]] = sandbox.take_file(str(message["name"]),
                                                               out_dir / str(message["name"]))
            run.messages.append(message)
    except BastionError as exc:
        run.error = str(exc)
    finally:
        if close:
            observation = sandbox.close()
            run.findings = observation.findings()
            run.observer = observation.observer
    return run
