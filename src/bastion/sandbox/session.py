"""The parent's side of a sandboxed worker: start it, send requests, read data back under deadlines, stop it.

Nothing that comes out of the sandbox is unpickled: messages are JSON lines, checked here, and files the job wrote
are moved out of scratch only when they are plain files with plain names.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import secrets
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bastion.core.errors import BastionError
from bastion.core.notices import say_once
from bastion.core.threads import THREAD_ENV_DEFAULTS
from bastion.sandbox.bwrap import bwrap_command, bwrap_problem, readable_roots
from bastion.sandbox.launcher import AUDIT_ENV, JOB_ENV, LAUNCHER
from bastion.sandbox.observe import Event, Observation, parse_log, strace_command
from bastion.sandbox.paths import with_absolute_paths
from bastion.sandbox.policy import SandboxPolicy
from bastion.sandbox.seccomp import build_filter

MESSAGE_TYPES = {"ready", "loaded", "result", "outcome", "file", "audit", "end", "error"}
MAX_MESSAGE = 256 << 20
# A job that fits the worker's empty request pipe is written inline: the write cannot block, even if a hostile worker
# stops reading. A writer thread per job took a one-input round trip from ~0.7 to 2.4-3.5 ms on a busy machine. The room
# is the pipe's own capacity (F_GETPIPE_SZ; Linux lowers it to one page for users over their pipe quota).
PIPE_ROOM_FALLBACK = 4096
ENV_PASSED = ("PATH", "LANG", "LC_ALL", "TZ", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY",
              "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "PYTHONPATH", "BASTION_DEBUG", "PYTHONHASHSEED",
              "CUBLAS_WORKSPACE_CONFIG")
WORKER_ENV_DEFAULTS = THREAD_ENV_DEFAULTS  # the worker's thread settings unless the user sets them


def passed_env(environ: dict[str, str]) -> dict[str, str]:
    """The part of the caller's environment the worker gets, over the worker's defaults."""
    return {**WORKER_ENV_DEFAULTS, **{k: environ[k] for k in ENV_PASSED if k in environ}}




class SandboxError(BastionError):
    """The sandboxed job failed, or the worker broke the protocol."""


class SandboxTimeout(SandboxError):
    """The sandboxed job ran past its deadline and was stopped."""


def _die_with_parent() -> Any:
    """A preexec function that makes the child get SIGKILL when Bastion's process dies (Linux prctl), or None."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = {"SIGXCPU": " (CPU-time limit)", "SIGXFSZ": " (file-size limit)", "SIGKILL": " (killed: memory?)",
                "SIGSEGV": " (crashed)"}.get(name, "")
        return f"signal {name}{hint}"
    return f"exit code {code}"


class Sandbox:
    """One worker process, sandboxed with bubblewrap (or, where namespaces are unavailable, a plain subprocess
    with resource limits), observed with strace (or Python audit hooks where strace is missing)."""

    def __init__(self, policy: SandboxPolicy | None = None, read_only: list[str] | tuple[str, ...] = (),
                 import_path: list[str] | tuple[str, ...] = (), job: str = "assess"):
        self.policy = policy or SandboxPolicy()
        self.job = job  # what the worker imports while it waits for the first request (see jobs.preload)
        self.import_path = list(import_path)
        self.extra_read_only = [str(Path(p).absolute()) for p in read_only if p and Path(p).exists()]
        self.process: subprocess.Popen | None = None
        self.isolation = "none"
        self.observer = "none"
        self.loaded = False
        self.audit_events: list[Event] = []
        self.started_at: float | None = None
        self.ready_seconds: float | None = None
        self.worker_cpu = 0.0  # CPU seconds the worker reported (for benchmarks; not trusted for anything else)
        self._buffer = b""
        self._selector: selectors.BaseSelector | None = None
        self._pipe_room = PIPE_ROOM_FALLBACK  # set to the request pipe's capacity by start()

    # -- life cycle --------------------------------------------------------------------------------------------
    def start(self) -> Sandbox:
        """Start the worker now (it imports PyTorch while the caller prepares the request)."""
        if self.process is not None:
            return self
        self.scratch = Path(tempfile.mkdtemp(prefix="bastion-scratch-"))
        self.logdir = Path(tempfile.mkdtemp(prefix="bastion-trace-"))
        self.marker = f"/.bastion-observe-{secrets.token_hex(8)}"
        read_fd, write_fd = os.pipe()
        fds = [write_fd]
        problem = bwrap_problem()
        strace = strace_command(self.logdir / "trace.log")
        if strace is None:
            say_once("strace is not installed: dynamic analysis falls back to Python audit hooks "
                     "(what native code does is not observed)")
        env = passed_env(dict(os.environ))
        env.update(HOME=str(self.scratch), TMPDIR=str(self.scratch), PYTHONDONTWRITEBYTECODE="1",
                   BASTION_SANDBOX_LIMITS=json.dumps(self.policy.rlimits()), BASTION_SANDBOX_MARKER=self.marker,
                   BASTION_SANDBOX_WARMUP=self.marker,
                   BASTION_IN_SANDBOX="1", **{JOB_ENV: self.job})
        if strace is None:
            env[AUDIT_ENV] = "1"
        from bastion.attacks.privacy.checkpoints import into_sandbox

        self._checkpoints = into_sandbox(self.scratch, env)  # a stopped job's state, for --resume
        if self.import_path:
            env["PYTHONPATH"] = os.pathsep.join([*self.import_path, *filter(None, [env.get("PYTHONPATH")])])
        worker = [sys.executable, "-c", LAUNCHER, str(write_fd)]
        if problem is None:
            program = build_filter()
            seccomp_fd = None
            if program is not None:
                seccomp_fd = os.memfd_create("bastion-seccomp", 0)
                os.write(seccomp_fd, program)
                os.lseek(seccomp_fd, 0, os.SEEK_SET)
                fds.append(seccomp_fd)
            self._roots = readable_roots(self.extra_read_only)
            command = bwrap_command(worker, self.scratch, self._roots, seccomp_fd, gpu=self.policy.gpu)
            self.isolation = "bubblewrap" + (" + seccomp" if seccomp_fd is not None else "")
        else:
            say_once(f"no sandbox: {problem}; model code runs in a plain subprocess with resource limits and a "
                     "deadline, without filesystem or network isolation")
            self._roots = readable_roots(self.extra_read_only)
            command = worker
            self.isolation = "subprocess (fallback)"
        self.observer = "strace" if strace is not None else "audit-hook"
        self.started_at = time.perf_counter()
        if strace is not None and shutil.which("setpriv"):  # strace's child dies with strace, bwrap's with bwrap
            command = [shutil.which("setpriv") or "setpriv", "--pdeathsig", "KILL", "--", *command]
        try:
            self.process = subprocess.Popen([*(strace or []), *command], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=fds,
                                            start_new_session=True, cwd=self.scratch, env=env,
                                            preexec_fn=_die_with_parent())
        except OSError as exc:
            raise SandboxError(f"cannot start the sandboxed worker ({exc})") from None
        finally:
            for fd in fds:
                os.close(fd)
        self._results = read_fd
        self._muted = False
        self._pipe_room = _pipe_capacity(self.process.stdin)
        threading.Thread(target=self._forward_output, args=(self.process.stdout,), daemon=True).start()
        os.set_blocking(read_fd, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(read_fd, selectors.EVENT_READ)
        return self

    def wait_ready(self) -> float:
        """Block until the worker's interpreter is up and running; the seconds since start."""
        self.start()
        if self.ready_seconds is None:
            self._expect("ready", time.perf_counter() + max(self.policy.load_timeout, 30.0), "start-up")
        return self.ready_seconds or 0.0

    def close(self) -> Observation:
        """Stop the worker, remove its scratch folder, and return what the model was seen doing."""
        observation = Observation(list(self.audit_events), self.observer)
        if self.process is None:
            return observation
        try:
            if self.process.stdin and not self.process.stdin.closed:
                self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._kill()
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        os.close(self._results)
        log = self.logdir / "trace.log"
        if self.observer == "strace" and log.is_file():
            text = log.read_text(errors="replace")
            observation = parse_log(text, self.marker, str(self.scratch), self._roots)
        from bastion.attacks.privacy.checkpoints import out_of_sandbox

        out_of_sandbox(self.scratch, getattr(self, "_checkpoints", None))
        shutil.rmtree(self.scratch, ignore_errors=True)
        shutil.rmtree(self.logdir, ignore_errors=True)
        self.process = None
        return observation

    def abort(self) -> None:
        """Stop the worker at once (the job will not be sent) and clean up."""
        self._kill()
        self.close()

    def _forward_output(self, stream: Any) -> None:
        """Copy what the worker prints to our stderr (never to stdout), until the worker is killed: a dying
        worker's last words (its tracer gone, calls fail) are noise."""
        for line in iter(stream.readline, b""):
            if not self._muted:
                sys.stderr.write(line.decode(errors="replace"))
        stream.close()

    def _kill(self) -> None:
        self._muted = True
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ----------------------------------------------------------------------------------------------
    def request(self, kind: str, **payload: Any) -> Iterator[dict[str, Any]]:
        """Send one job; yield its `loaded`, `result`, `outcome` and `file` messages until it ends."""
        self.start()
        try:
            blob = pickle.dumps((kind, with_absolute_paths(payload)), protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError, RuntimeError) as exc:
            raise SandboxError(f"cannot send the job to the sandboxed worker ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        framed = struct.pack("<Q", len(blob)) + blob
        if len(framed) <= self._pipe_room:  # fits the worker's empty pipe: the write cannot block
            self._write(framed)
        else:  # a large job is written from a thread while this one reads, so neither side can block the other
            threading.Thread(target=self._write, args=(framed,), daemon=True).start()
        now = time.perf_counter()
        end = None if self.policy.timeout is None else now + self.policy.timeout
        load_end = now + self.policy.load_timeout
        ended = False
        try:
            while True:
                waiting_load = not self.loaded
                deadline = load_end if waiting_load else end
                if waiting_load and end is not None:
                    deadline = min(load_end, end)
                message = self._next(deadline, "loading the model" if waiting_load else "the job")
                kind_ = message["type"]
                if kind_ in ("loaded", "outcome", "result"):
                    self.loaded = True
                if kind_ in ("end", "error"):
                    ended = True
                if kind_ == "end":
                    cpu = message.get("cpu_seconds")
                    self.worker_cpu = float(cpu) if isinstance(cpu, (int, float)) else self.worker_cpu
                    return
                if kind_ == "error":
                    raise SandboxError(str(message.get("message", "the sandboxed job failed")))
                if kind_ not in ("loaded", "ready"):
                    yield message
        finally:
            if not ended:  # the caller stopped early or the worker failed: the worker cannot take another request
                self._kill()

    def _write(self, data: bytes) -> None:
        try:
            assert self.process is not None and self.process.stdin is not None
            self.process.stdin.write(data)
            self.process.stdin.flush()
        except (OSError, ValueError):  # the worker died: the reader reports it
            pass

    def take_file(self, name: str, dest: Path) -> Path:
        """Move a file the job wrote to scratch/out/NAME out of the sandbox, to `dest`."""
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]{0,200}", name):
            raise SandboxError(f"the sandboxed job named an invalid output file {name!r}")
        source = self.scratch / "out" / name
        if source.is_symlink() or not source.is_file():
            raise SandboxError(f"the sandboxed job's output {name!r} is not a plain file")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest, follow_symlinks=False)
        source.unlink()
        return dest

    # -- reading -----------------------------------------------------------------------------------------------
    def _expect(self, kind: str, deadline: float, what: str) -> dict[str, Any]:
        message = self._next(deadline, what)
        if message["type"] != kind:
            raise SandboxError(f"the sandboxed worker sent {message['type']!r} before {kind!r}")
        return message

    def _next(self, deadline: float | None, what: str) -> dict[str, Any]:
        """The next message, or SandboxTimeout at `deadline` (the worker is killed), or SandboxError at its end."""
        while True:
            line, sep, rest = self._buffer.partition(b"\n")
            if sep:
                self._buffer = rest
                message = _parse(line)
                if message["type"] == "ready" and self.ready_seconds is None:
                    self.ready_seconds = time.perf_counter() - (self.started_at or 0.0)
                if message["type"] == "audit":
                    self.audit_events.append(_audit_event(message))
                    continue
                return message
            if len(self._buffer) > MAX_MESSAGE:
                self._kill()
                raise SandboxError("the sandboxed worker sent an oversized message")
            timeout = None if deadline is None else deadline - time.perf_counter()
            if timeout is not None and timeout <= 0:
                self._kill()
                limit = self.policy.load_timeout if what == "loading the model" else self.policy.timeout
                raise SandboxTimeout(f"{what} did not finish within the {limit:g} s deadline (set it with "
                                     "--timeout); the sandboxed worker was stopped")
            assert self._selector is not None
            if not self._selector.select(timeout):
                continue
            chunk = os.read(self._results, 1 << 20)
            if not chunk:
                assert self.process is not None
                try:
                    code = self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._kill()
                    code = self.process.returncode
                raise SandboxError(f"the sandboxed worker stopped while {what} ({_describe_exit(code)})")
            self._buffer += chunk


def _pipe_capacity(stream: Any) -> int:
    """Bytes the (empty) pipe behind `stream` takes without a reader: its capacity, or one page if unknown."""
    try:
        import fcntl

        return int(fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_GETPIPE_SZ", 1032)))
    except (OSError, ValueError, AttributeError, ImportError):
        return PIPE_ROOM_FALLBACK


def _parse(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError:
        raise SandboxError("the sandboxed worker sent a message that is not JSON") from None
    if not isinstance(message, dict) or message.get("type") not in MESSAGE_TYPES:
        raise SandboxError("the sandboxed worker sent a message of an unknown type")
    if message["type"] in ("result", "outcome") and not isinstance(message.get("data"), dict):
        raise SandboxError("the sandboxed worker sent a result that is not an object")
    return message


def _audit_event(message: dict[str, Any]) -> Event:
    kind = str(message.get("kind"))
    if kind not in ("write", "exec", "spawn", "socket", "connect", "library"):
        raise SandboxError("the sandboxed worker sent an unknown audit event")
    return Event(kind, str(message.get("target", ""))[:500], str(message.get("call", "")), False, 0)
