"""`bastion guard serve` as a real process (the model in the sandboxed worker): every answered request is in the
audit log after a `kill -9` under load, SIGTERM drains and exits 0, and `bastion guard log` reads the log."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model: str, audit, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "bastion", "guard", "serve", model, "--port", str(port),
                                "--audit", str(audit)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return process
        except OSError:
            if process.poll() is not None:
                raise AssertionError(process.stderr.read().decode()) from None
            time.sleep(0.2)
    process.kill()
    raise AssertionError("the guard did not start within 60 s")


def _hammer(url: str, body: bytes, answered: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as answer:
                answer.read()
                answered.append(answer.status)
        except (OSError, urllib.error.URLError):
            return


def test_kill_9_loses_no_committed_entry_and_sigterm_drains(digits_demo, tmp_path):
    from bastion.guard.audit_log import read_log

    audit, port = tmp_path / "audit.sqlite", _free_port()
    server = _start(str(digits_demo.model_path), audit, port)
    body = json.dumps({"inputs": np.asarray(digits_demo.test.x[:4]).tolist()}).encode()
    answered: list[int] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_hammer, args=(f"http://127.0.0.1:{port}/predict", body, answered, stop))
               for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    os.kill(server.pid, signal.SIGKILL)  # under load: requests are in flight
    server.wait(10)
    stop.set()
    for t in threads:
        t.join(15)
    ok = sum(1 for s in answered if s == 200)
    logged = [e for e in read_log(audit) if e.status == 200]
    assert ok > 5 and len(logged) >= ok  # every answered request was committed before its answer left

    port = _free_port()
    server = _start(str(digits_demo.model_path), audit, port)  # the log reopens after the crash
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body)) as answer:
        assert answer.status == 200
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0
    out = subprocess.run([sys.executable, "-m", "bastion", "guard", "log", "--audit", str(audit), "--json",
                          "--key", "anonymous", "--since", "1h"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert len(out.stdout.splitlines()) == len(read_log(audit, key="anonymous"))
    assert json.loads(out.stdout.splitlines()[-1])["status"] == 200


def test_since_errors_in_one_line():
    from bastion.core.errors import DataError
    from bastion.guard.audit_log import parse_since

    assert parse_since("10m", now=1000.0) == 400.0
    with pytest.raises(DataError, match="--since 'soon'"):
        parse_since("soon")
