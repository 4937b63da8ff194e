"""Build the guard from command-line options and run it under uvicorn (graceful shutdown on SIGTERM/SIGINT:
uvicorn stops accepting, drains in-flight requests for up to `drain_s` seconds, then the model worker and the
audit log are closed)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from bastion.core.errors import ParameterError
from bastion.guard.app import Guard, make_app
from bastion.guard.audit_log import AuditLog
from bastion.guard.backend import ServedModel
from bastion.guard.guard_policy import Policy, default_policy, load_policy
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


def serve(guard: Guard, host: str = "127.0.0.1", port: int = 8000, drain_s: float = 10.0) -> None:
    """Serve until SIGTERM/SIGINT, then drain and close."""
    import uvicorn

    config = uvicorn.Config(make_app(guard), host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=int(drain_s), lifespan="off")
    if threading.current_thread() is threading.main_thread():
        # uvicorn drains, restores this handler and raises SIGTERM again: the drained server then exits with 0
        signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run()
    finally:
        guard.model.close()
        guard.audit.close()
