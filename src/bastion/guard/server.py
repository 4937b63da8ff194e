"""Build the guard (a classifier's or a language model's) from command-line options and run it under uvicorn
(graceful shutdown on SIGTERM/SIGINT:
uvicorn stops accepting, drains in-flight requests for up to `drain_s` seconds, then the model worker and the
audit log are closed)."""

from __future__ import annotations

import gc
import signal
import sys
import threading
from pathlib import Path

from bastion.core.errors import ParameterError
from bastion.guard.app import Guard, make_app
from bastion.guard.audit_log import AuditLog
from bastion.guard.backend import ServedModel
from bastion.guard.guard_policy import Policy, default_policy, load_policy
from bastion.guard.llm_app import LMGuard, make_llm_app
from bastion.guard.rules import Reference


def build_guard(model: str, *, policy: str | Path | None = None, data: str | Path | None = None,
                audit: str | Path = "bastion-guard.sqlite", arch: str | None = None, trust: bool = False,
                sandbox: bool = True, log_inputs: bool = False) -> Guard:
    """Validate the policy and data first (cheap), then load the model and calibrate the detectors."""
    chosen: Policy = default_policy() if policy is None else load_policy(policy)
    dataset = None
    if data is not None:
        from bastion.core.data_files import load_dataset

        dataset = load_dataset(data)
    served = ServedModel(model, arch=arch, data=dataset, trust=trust, sandbox=sandbox)
    try:
        if dataset is not None and tuple(dataset.input_shape) != served.info.input_shape:
            raise ParameterError(f"--data {data}: inputs of shape {tuple(dataset.input_shape)}, the model takes "
                                 f"{served.info.input_shape}")
        reference = None if dataset is None else Reference(dataset)
        return Guard(served, chosen, AuditLog(audit), reference, log_inputs)
    except BaseException:
        served.close()
        raise


def is_language_model(model: str) -> bool:
    """A `.gguf` file or a Hugging Face folder (config.json) is served as a language model."""
    path = Path(model)
    return path.suffix.lower() == ".gguf" or (path.is_dir() and (path / "config.json").is_file())


def build_llm_guard(model: str, *, policy: str | Path | None = None, audit: str | Path = "bastion-guard.sqlite",
                    trust: bool = False, sandbox: bool = True, system_prompt: str | None = None,
                    temperature: float = 0.0, name: str | None = None) -> LMGuard:
    """A guard for a language model, loaded in this process: the formats the LM layer accepts carry no code
    (safetensors, GGUF; pickled weights only with `trust`, through torch's weights-only unpickler; never
    `trust_remote_code`), and `open_lm` scans the file or folder before it loads. `sandbox` is accepted for symmetry
    with classifiers and changes nothing here: the sandbox is for files that carry code."""
    from bastion.lm import Sampling, open_lm

    chosen: Policy = default_policy() if policy is None else load_policy(policy)
    ceiling = max(t.llm.max_new_tokens for t in chosen.tiers.values())
    lm = open_lm(model, system_prompt=system_prompt, trust=trust,
                 sampling=Sampling(temperature=temperature, max_new_tokens=ceiling))
    try:
        return LMGuard(lm, chosen, AuditLog(audit), name or Path(model).name)
    except BaseException:
        lm.close()
        raise


def steady_latency() -> None:
    """Fewer long pauses while serving: what was loaded so far (the model, torch, the detectors' data) leaves the
    garbage collector's generations (`gc.freeze`), so a full collection no longer walks it on the request path, and
    the event loop gets the interpreter back from the model's runner thread within 1 ms instead of 5."""
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(0.001)


def serve(guard: Guard | LMGuard, host: str = "127.0.0.1", port: int = 8000, drain_s: float = 10.0) -> None:
    """Serve until SIGTERM/SIGINT, then drain and close."""
    import uvicorn

    app = make_llm_app(guard) if isinstance(guard, LMGuard) else make_app(guard)
    steady_latency()
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=int(drain_s), lifespan="off")
    if threading.current_thread() is threading.main_thread():
        # uvicorn drains, restores this handler and raises SIGTERM again: the drained server then exits with 0
        signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run()
    finally:
        if isinstance(guard, LMGuard):
            guard.lm.close()
        else:
            guard.monitor_thread.shutdown(wait=True)
            guard.model.close()
        guard.audit.close()
