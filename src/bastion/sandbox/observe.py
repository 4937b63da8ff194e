"""Dynamic analysis: what the model's code tried to do inside the worker, read from an strace log.

strace (outside the sandbox, so the model cannot tamper with the log) follows the worker and every process it
spawns, stopping only at the calls that matter (`--seccomp-bpf`): file creation, writes, renames and deletions,
program execution, process creation, sockets, and opening native libraries. Events before the worker's start
marker (bubblewrap's own set-up) are ignored, and so is the worker's normal activity: scratch, /dev/null,
/proc/self, libraries of the Python install and the system library folders, and its warm-up — the one window,
before the first request (so before any model code exists in the sandbox), between the worker's two warm-up
markers, where libraries run their one-time machine probes (`bastion.sandbox.worker.warm_up`). Only the first
window counts: a model opening the marker paths later hides nothing. What remains is what the model did, and
each kind becomes one Finding.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bastion.core.results import Finding

TRACED = ("open", "openat", "openat2", "creat", "rename", "renameat", "renameat2", "unlink", "unlinkat", "mkdir",
          "mkdirat", "rmdir", "link", "linkat", "symlink", "symlinkat", "truncate", "chmod", "fchmodat", "execve",
          "execveat", "fork", "vfork", "clone", "clone3", "socket", "connect", "bind", "sendto", "chdir")
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
SYSTEM_LIB_DIRS = ("/lib/", "/lib64/", "/lib32/", "/usr/lib/", "/usr/lib64/", "/usr/lib32/", "/usr/local/lib/")
NAME_SERVICE_SOCKETS = ('unix "/var/run/nscd/socket"', 'unix "/run/nscd/socket"')  # glibc's own lookups
HARMLESS_PATHS = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/shm/", "/proc/self/",
                  "/dev/tty", "/dev/pts/")
ATLAS = ["AML.T0010", "AML.T0011"]  # ML supply chain compromise; user execution of unsafe ML artifacts
OWASP = ["ML06"]

_LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<call>\w+)\((?P<args>.*?)(?:\)\s+=\s+(?P<ret>-?\d+|\?)(?P<rest>.*))?$")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_DIRFD = re.compile(r"^\d+<([^>]*)>,")


def _unescape(text: str) -> str:
    return text.encode("latin-1", errors="replace").decode("unicode_escape", errors="replace")


@dataclass
class Event:
    """One thing the model tried: kind (write, exec, spawn, socket, connect, library), what, and whether it worked."""

    kind: str
    target: str
    call: str
    succeeded: bool
    pid: int


@dataclass
class Observation:
    """Everything a worker's strace log says about the model, plus how it was observed."""

    events: list[Event] = field(default_factory=list)
    observer: str = "strace"

    def findings(self) -> list[Finding]:
        """One finding per kind of behaviour, naming the paths, commands or addresses."""
        out = []
        for kind, (severity, title, what) in _KINDS.items():
            hits = [e for e in self.events if e.kind == kind]
            if not hits:
                continue
            targets = list(dict.fromkeys(e.target for e in hits))
            out.append(Finding(
                title=f"{title}: {', '.join(targets[:3])}{' ...' if len(targets) > 3 else ''}",
                family="supply_chain", severity=severity, metric=f"dynamic-{kind}", value=float(len(hits)),
                evidence={"rule": f"dynamic-{kind}", "targets": targets[:50], "attempts": len(hits),
                          "succeeded": sum(e.succeeded for e in hits), "observer": self.observer,
                          "calls": sorted({e.call for e in hits})},
                atlas=list(ATLAS), owasp=list(OWASP),
                description=f"While it was loaded and run in Bastion's sandbox, the model's code {what}. Attempts "
                            "count even when the sandbox made them fail.",
                recommendation="Do not load this model outside a sandbox; obtain it from a trusted source or "
                               "convert its weights to safetensors with a reviewed architecture."))
        return out


_KINDS = {
    "write": ("critical", "model code wrote files outside its scratch folder", "created, wrote, renamed or deleted "
              "files outside its scratch folder"),
    "exec": ("critical", "model code executed programs", "executed programs"),
    "connect": ("critical", "model code connected to network addresses", "connected or sent to network addresses"),
    "spawn": ("high", "model code created processes", "created new processes"),
    "socket": ("high", "model code opened sockets", "opened network sockets"),
    "library": ("high", "model code loaded native libraries", "loaded native libraries from outside the Python "
                "install and the system library folders"),
}


FORCE_AUDIT = "BASTION_SANDBOX_OBSERVER"  # =audit: observe with audit hooks as if strace were missing (tests)


def strace_command(log: Path) -> list[str] | None:
    """The strace prefix that writes the worker's log to `log`, or None when strace is not installed."""
    exe = shutil.which("strace")
    if exe is None or os.environ.get(FORCE_AUDIT, "").lower() == "audit":
        return None
    return [exe, "-f", "-qq", "-y", "--seccomp-bpf", "-s", "512", "-e", "signal=none",
            "-e", "trace=" + ",".join("?" + c for c in TRACED), "-o", str(log)]


def warmup_markers(marker: str) -> tuple[str, str]:
    """The paths the worker opens before and after its warm-up (derived from the session's start marker)."""
    return f"{marker}-warmup-begin", f"{marker}-warmup-end"


class _Parser:
    def __init__(self, marker: str, scratch: str, allowed_roots: list[str]):
        self.marker, self.scratch = marker, scratch.rstrip("/") + "/"
        self.allowed = tuple(r.rstrip("/") + "/" for r in allowed_roots) + SYSTEM_LIB_DIRS
        self.started = False
        self.warmup, self.warming, self.warmed = warmup_markers(marker), False, False
        self.setup_pids: set[int] = set()
        self.cwd: dict[int, str] = {}
        self.events: list[Event] = []

    def feed(self, line: str) -> None:
        m = _LINE.match(line.strip())
        if m is None or "resumed>" in line:
            return
        pid, call, args = int(m["pid"]), m["call"], m["args"]
        if not self.started:
            if call.startswith("open") and self.marker in args:
                self.started, self.worker = True, pid
                self.cwd[pid] = self.scratch.rstrip("/")
            else:
                self.setup_pids.add(pid)
            return
        if pid in self.setup_pids and pid != self.worker:
            return
        if self._in_warmup(pid, call, args):
            return
        ret = m["ret"]
        ok = ret is not None and ret != "?" and not ret.startswith("-")
        self._classify(pid, call, args, ok)

    def _in_warmup(self, pid: int, call: str, args: str) -> bool:
        """True for the events of the worker's one warm-up window, whatever process made them (the probes it
        starts have exited when it ends: a process, or a reused pid, acting later is observed)."""
        if not self.warmed and pid == self.worker and call.startswith("open"):
            if not self.warming and self.warmup[0] in args:
                self.warming = True
                return True
            if self.warming and self.warmup[1] in args:
                self.warming, self.warmed = False, True
                return True
        return self.warming

    def _path(self, pid: int, raw: str) -> str:
        if raw.startswith("/"):
            return str(Path(raw))
        return str(Path(self.cwd.get(pid, self.cwd.get(self.worker, self.scratch)), raw))

    def _inside_scratch(self, path: str) -> bool:
        return (path + "/").startswith(self.scratch) or path.startswith(HARMLESS_PATHS) or path in (
            p.rstrip("/") for p in HARMLESS_PATHS)

    def _classify(self, pid: int, call: str, args: str, ok: bool) -> None:
        strings = [_unescape(s) for s in _STRING.findall(args)]
        dirfd = _DIRFD.match(args)
        if dirfd and strings and not strings[0].startswith("/"):
            strings[0] = dirfd.group(1).rstrip("/") + "/" + strings[0]
        add = lambda kind, target: self.events.append(Event(kind, target, call, ok, pid))  # noqa: E731
        if call == "chdir" and strings:
            if ok:
                self.cwd[pid] = self._path(pid, strings[0])
        elif call in ("open", "openat", "openat2", "creat"):
            if not strings:
                return
            path = self._path(pid, strings[0])
            if call == "creat" or any(flag in args for flag in WRITE_FLAGS):
                if not self._inside_scratch(path):
                    add("write", path)
            elif re.search(r"\.so(\.\d+)*$", path) and ok and not path.startswith(self.allowed):
                add("library", path)
        elif call in ("execve", "execveat"):
            argv = _STRING.findall(args[args.find("[") :]) if "[" in args else []
            add("exec", " ".join(argv[:8]) or (strings[0] if strings else "?"))
        elif call in ("fork", "vfork") or (call in ("clone", "clone3") and "CLONE_THREAD" not in args):
            add("spawn", f"{call} by pid {pid}")
        elif call == "socket":
            family = args.split(",", 1)[0].strip()
            if family not in ("AF_UNIX", "AF_LOCAL", "AF_NETLINK"):
                add("socket", family)
        elif call in ("connect", "bind", "sendto"):
            address = _address(args)
            if address in NAME_SERVICE_SOCKETS:
                return
            if address and (call != "sendto" or "sin" in args):
                add("connect" if call != "bind" else "socket", f"{call} {address}")
        elif call in _PATH_CALLS:
            for raw in strings[: _PATH_CALLS[call]]:
                path = self._path(pid, raw)
                if not self._inside_scratch(path):
                    add("write", path)
                    break


_PATH_CALLS = {"rename": 2, "renameat": 2, "renameat2": 2, "unlink": 1, "unlinkat": 1, "mkdir": 1, "mkdirat": 1,
               "rmdir": 1, "link": 2, "linkat": 2, "symlink": 2, "symlinkat": 2, "truncate": 1, "chmod": 1,
               "fchmodat": 1}


def _address(args: str) -> str | None:
    """`host:port` (or a socket path) from strace's decoding of a sockaddr."""
    port = re.search(r"sin6?_port=htons\((\d+)\)", args)
    host = re.search(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"', args)
    if host:
        return f"{host.group(1) or host.group(2)}:{port.group(1) if port else '?'}"
    path = re.search(r'sun_path=(@?"[^"]*")', args)
    return f"unix {path.group(1)}" if path else None


def parse_log(text: str, marker: str, scratch: str, allowed_roots: list[str]) -> Observation:
    """The model's behaviour in an strace log (see the module docstring for what is filtered out)."""
    parser = _Parser(marker, scratch, allowed_roots)
    for line in text.splitlines():
        parser.feed(line)
    return Observation(parser.events, "strace")
