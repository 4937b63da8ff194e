"""The sandboxed worker: `python -m bastion.sandbox.worker RESULTS_FD`.

It reads requests from stdin (an 8-byte length, then a pickle written by the trusted parent), runs each whole job
(model loading, attack or defense code, the model's forward passes) and writes its messages as JSON lines on
RESULTS_FD: data only, which the parent validates. Its stdout is the parent's stderr, so that whatever the model
prints never mixes with results. `LAUNCHER` sets the resource limits and writes the observation start marker
before Python imports anything of Bastion or PyTorch, and says `ready` (the sandbox is up; PyTorch is imported
next, while the parent prepares the request).
"""

from __future__ import annotations

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


def main() -> None:
    from bastion.core.quiet import quiet_torch_deprecations

    quiet_torch_deprecations()  # torch.jit's FutureWarning would reach the user's terminal through our stdout
    channel = Channel(int(sys.argv[1]))
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
