"""`bastion guard serve` as a real process (the model in the sandboxed worker): every answered request is in the
audit log after a `kill -9` under load, SIGTERM drains and exits 0, and `bastion guard log` reads the log."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.guard_fixtures import start_guard


def _hammer(url: str, body: bytes, answered: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as answer:
                answer.read()
                answered.append(answer.status)
        except (OSError, urllib.error.URLError, http.client.HTTPException):  # a kill -9 mid-answer: IncompleteRead
            return


def test_kill_9_loses_no_committed_entry_and_sigterm_drains(digits_demo, tmp_path):
    from bastion.guard.audit_log import read_log

    audit = tmp_path / "audit.sqlite"
    server, url = start_guard([str(digits_demo.model_path), "--audit", str(audit)])
    body = json.dumps({"inputs": np.asarray(digits_demo.test.x[:4]).tolist()}).encode()
    answered: list[int] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_hammer, args=(f"{url}/predict", body, answered, stop))
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

    server, url = start_guard([str(digits_demo.model_path), "--audit", str(audit)])  # the log reopens after the crash
    with urllib.request.urlopen(urllib.request.Request(f"{url}/predict", data=body)) as answer:
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
