"""The bubblewrap command line of a worker, and a once-per-process probe that bubblewrap works here.

Isolation (bubblewrap's namespaces): no network (a private, empty network namespace), private PID, IPC, UTS and
user namespaces, all capabilities dropped, a new session (no terminal injection), and death with the parent. The
filesystem is a read-only view of what Python and its packages need; `$HOME` and `/tmp` are empty tmpfs; one
private scratch directory is the only writable place on disk.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/sys")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/nsswitch.conf",
             "/etc/passwd", "/etc/group", "/etc/alternatives")
ISOLATION = ("--unshare-all", "--unshare-user", "--cap-drop", "ALL", "--die-with-parent", "--new-session")
FORCE_FALLBACK = "BASTION_SANDBOX"  # =fallback: behave as if namespaces were unavailable (tests, debugging)


@functools.cache
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot sandbox here (None when it can). Probed once per process."""
    if os.environ.get(FORCE_FALLBACK, "").lower() == "fallback":
        return f"{FORCE_FALLBACK}=fallback is set"
    exe = shutil.which("bwrap")
    if exe is None:
        return "bubblewrap (bwrap) is not installed"
    try:
        done = subprocess.run([exe, *ISOLATION, "--ro-bind", "/", "/", "true"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap failed to start ({type(exc).__name__})"
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        return f"bwrap cannot create namespaces here ({lines[-1] if lines else f'exit {done.returncode}'})"
    return None


def readable_roots(extra: list[str]) -> list[str]:
    """Folders and files the worker reads: the Python install, every import path, and `extra` (model files)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(sys.executable).parent)}
    paths.update(p for p in sys.path if p)
    paths.update(extra)
    out: set[str] = set()
    for p in paths:
        for candidate in (Path(p).absolute(), Path(p).resolve()):
            if candidate.exists() and not any(str(candidate).startswith(s + "/") for s in SYSTEM_DIRS):
                out.add(str(candidate))
    return _outermost(sorted(out))


def _outermost(paths: list[str]) -> list[str]:
    """Drop paths inside another listed folder (binding the folder covers them)."""
    kept: list[str] = []
    for p in sorted(paths, key=len):
        if not any(p == k or p.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(p)
    return sorted(kept)


def bwrap_command(worker: list[str], scratch: Path, read_only: list[str], seccomp_fd: int | None,
                  gpu: bool = False) -> list[str]:
    """bwrap ... -- WORKER: the sandbox around `worker`, with `scratch` as its only writable folder."""
    cmd = [shutil.which("bwrap") or "bwrap", *ISOLATION]
    for d in SYSTEM_DIRS:
        cmd += ["--ro-bind-try", d, d]
    for f in ETC_FILES:
        cmd += ["--ro-bind-try", f, f]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    home = os.environ.get("HOME")
    if home and home != "/":
        cmd += ["--tmpfs", home]
    for p in read_only:
        cmd += ["--ro-bind", p, p]
    if gpu:
        for dev in sorted(Path("/dev").glob("nvidia*")) + sorted(Path("/dev").glob("dri")):
            cmd += ["--dev-bind-try", str(dev), str(dev)]
    cmd += ["--bind", str(scratch), str(scratch), "--chdir", str(scratch)]
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    return cmd + ["--", *worker]
