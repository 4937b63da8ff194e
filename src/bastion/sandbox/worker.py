"""The sandboxed worker: `python -m bastion.sandbox.worker RESULTS_FD`.

It reads requests from stdin (an 8-byte length, then a pickle written by the trusted parent), runs each whole job
(model loading, attack or defense code, the model's forward passes) and writes its messages as JSON lines on
RESULTS_FD: data only, which the parent validates. Its stdout is the parent's stderr, so that whatever the model
prints never mixes with results. `LAUNCHER` sets the resource limits and writes the observation start marker
before Python imports anything of Bastion or PyTorch, and says `ready` (the sandbox is up; PyTorch is imported
next, while the parent prepares the request).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import struct
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO


def read_request(stream: BinaryIO) -> Any | None:
    """One length-prefixed pickle from the parent (None at end of input)."""
    head = stream.read(8)
    if len(head) < 8:
        return None
    (size,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(size))  # the parent is trusted; nothing from the sandbox is ever unpickled


class Channel:
    """JSON lines to the parent."""

    def __init__(self, fd: int):
        self.out = os.fdopen(fd, "w", buffering=1, encoding="utf-8")

    def send(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps(message) + "\n")
        self.out.flush()


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def serve(channel: Channel, handlers: dict[str, Callable[..., Iterator[dict[str, Any]]]]) -> None:
    """Answer requests until the parent closes stdin."""
    from bastion.core.errors import BastionError

    while (request := read_request(sys.stdin.buffer)) is not None:
        kind, payload = request
        try:
            for message in handlers[kind](**payload):
                channel.send(message)
            channel.send({"type": "end", "cpu_seconds": time.process_time()})
        except BastionError as exc:
            channel.send({"type": "error", "message": _one_line(exc)})
        except Exception as exc:  # noqa: BLE001 - a bug or a hostile model: one line back to the parent
            detail = traceback.format_exc() if os.environ.get("BASTION_DEBUG") else ""
            channel.send({"type": "error", "message": f"internal error: {type(exc).__name__}: {_one_line(exc)}",
                          "traceback": detail})


def _touch(path: str) -> None:
    with contextlib.suppress(OSError):  # the observer sees the attempt; the file need not exist
        os.close(os.open(path, os.O_RDONLY))


def warm_up(marker: str | None) -> None:
    """Run libraries' one-time probes of the machine now, before the first request (so before any model code
    is in the sandbox), between the two warm-up markers that the strace observer skips
    (`bastion.sandbox.observe.warmup_markers`) and before the audit hooks are installed.

    joblib counts physical cores with `lscpu --parse=core` (else `cat /proc/cpuinfo`) the first time
    scikit-learn sizes its OpenMP pool (KMeans in activation clustering, HistGradientBoosting's predict), and
    keeps the count for the process; run later, that probe read as "model code executed programs". Likewise
    the CUDA builds of PyTorch (e.g. the default 2.14 wheel) run `/sbin/ldconfig -p` while `import torch` loads
    their libraries (cuda-pathfinder's `ctypes.util.find_library("dl")`): torch is imported here too."""
    import importlib.util

    from bastion.sandbox.observe import warmup_markers

    begin, end = warmup_markers(marker) if marker else ("", "")
    if marker:
        _touch(begin)
    try:
        import torch  # noqa: F401 - Bastion's own dependency, before any model code is in the sandbox

        if importlib.util.find_spec("joblib") is not None:
            from joblib import cpu_count

            cpu_count(only_physical_cores=True)
    except Exception:  # noqa: BLE001 - a failed probe only means the library probes again later, observed
        pass
    finally:
        if marker:
            _touch(end)


def main() -> None:
    from bastion.core.quiet import quiet_torch_deprecations

    quiet_torch_deprecations()  # torch.jit's FutureWarning would reach the user's terminal through our stdout
    channel = Channel(int(sys.argv[1]))
    warm_up(os.environ.pop("BASTION_SANDBOX_WARMUP", None))
    if os.environ.get("BASTION_SANDBOX_AUDIT") == "1":
        from bastion.sandbox.audit import install

        install(channel)
    from bastion.sandbox.jobs import HANDLERS, preload
    from bastion.sandbox.launcher import JOB_ENV

    preload(os.environ.pop(JOB_ENV, "assess"))  # while the parent prepares the request
    serve(channel, HANDLERS)
    channel.out.flush()
    os._exit(0)  # results are sent: skip the interpreter's slow teardown


if __name__ == "__main__":
    main()
