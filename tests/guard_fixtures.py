"""Shared helpers of the guard tests: policy keys, a free loopback port, a guard app served by uvicorn in a thread,
a `bastion guard serve` process, and HTTP requests that return the error answers too. Importing it skips the
importing test module when the `guard` extra (starlette, uvicorn, prometheus_client) is not installed."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

for _extra in ("starlette", "uvicorn", "prometheus_client"):
    pytest.importorskip(_extra)


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def keys_for(names: tuple[str, ...] | list[str]) -> list[dict[str, str]]:
    """A policy's `keys`: key `name` has the secret `secret-<name>` and the tier of the same name."""
    return [{"id": name, "sha256": sha(f"secret-{name}"), "tier": name} for name in names]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(app: Any) -> Iterator[str]:
    """`app` served by uvicorn in a daemon thread on a free loopback port; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def digits_guard(demo: Any, policy: dict, folder: Path) -> Iterator[tuple[str, Path, Any]]:
    """The demo digits CNN behind a guard with `policy` (in-process model; the sandboxed path is
    test_guard_durability's): yields (base URL, audit log path, Guard)."""
    from bastion.guard.app import Guard, make_app
    from bastion.guard.audit_log import AuditLog
    from bastion.guard.backend import ServedModel
    from bastion.guard.guard_policy import parse_policy
    from bastion.guard.rules import Reference

    audit = folder / "audit.sqlite"
    guard = Guard(ServedModel(str(demo.model_path), sandbox=False), parse_policy(policy), AuditLog(audit),
                  Reference(demo.train))
    try:
        with served(make_app(guard)) as url:
            yield url, audit, guard
    finally:
        guard.audit.close()


def start_guard(args: list[str], timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """`bastion guard serve ARGS` in its own process on a free port, once /healthz answers: (process, base URL)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bastion", "guard", "serve", *args, "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return process, url
        except OSError:
            if process.poll() is not None:
                raise AssertionError(process.stderr.read().decode()) from None
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"the guard did not start within {timeout:.0f} s")


def fetch(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 30
          ) -> tuple[int, bytes, dict]:
    """(status, body, headers) of a GET (no data) or a JSON POST; an HTTP error's answer is returned, not raised
    (its empty body as `{}`)."""
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})},
                                     method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read() or b"{}", dict(exc.headers)
