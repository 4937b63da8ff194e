"""Observation without strace: Python audit hooks (PEP 578) in the worker.

They see what Python code does (open for writing, subprocess, os.system, exec, fork, sockets, ctypes) but not what
native code does (TorchScript's `aten::from_file`, ONNX custom ops), and model code in the same process could
tamper with them; so they are a fallback that Bastion names in its findings (`observer: audit-hook`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

_WRITE_MODES = ("w", "a", "x", "+")
_EVENTS = {"subprocess.Popen": "exec", "os.system": "exec", "os.exec": "exec", "os.posix_spawn": "exec",
           "os.spawn": "exec", "os.fork": "spawn", "os.forkpty": "spawn", "socket.connect": "connect",
           "socket.sendto": "connect", "socket.bind": "socket", "ctypes.dlopen": "library", "os.rename": "write",
           "os.remove": "write", "os.rmdir": "write", "os.mkdir": "write", "os.symlink": "write", "os.link": "write",
           "os.truncate": "write", "os.chmod": "write", "shutil.rmtree": "write"}


def install(channel: Any) -> None:
    """Send one `audit` message per suspicious event from now on (outside the scratch folder)."""
    scratch = os.getcwd().rstrip("/") + "/"
    busy = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if busy:
            return
        kind = _EVENTS.get(event)
        target = ""
        if event == "open" and args and isinstance(args[0], (str, bytes)):
            mode, flags = (args[1] or ""), (args[2] or 0)
            writes = any(m in str(mode) for m in _WRITE_MODES) or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            kind, target = ("write", os.fsdecode(args[0])) if writes else (None, "")
        elif kind == "write" and args and isinstance(args[0], (str, bytes)):
            target = os.fsdecode(args[0])
        elif kind is not None:
            target = " ".join(map(str, args[:2]))[:300]
        if kind is None:
            return
        if kind == "write" and (os.path.abspath(target) + "/").startswith(scratch):
            return
        if kind == "write" and target.startswith(("/dev/null", "/proc/self/")):
            return
        busy.append(1)
        try:
            channel.send({"type": "audit", "kind": kind, "target": target, "call": event})
        finally:
            busy.pop()

    sys.addaudithook(hook)
