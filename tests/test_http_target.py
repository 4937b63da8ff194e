"""HTTP targets against real loopback servers that misbehave: slow drip, bad numbers, redirects, 5xx, resets."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from bastion.cli.main import run
from bastion.core.data import Dataset, save_npz
from bastion.core.errors import BastionError, ModelLoadError
from bastion.models.http_backend import HttpClient, load_http

INFO = {"n_classes": 3, "input_shape": [4], "output": "probabilities", "bounds": [0, 1]}
FAST = HttpClient(timeout_s=1.0, retries=2, backoff_s=0.01)
X = np.random.default_rng(0).random((5, 4)).astype(np.float32)


class Request:
    def __init__(self, method: str, path: str, body: bytes):
        self.method, self.path, self.body = method, path, body

    def json(self) -> dict:
        return json.loads(self.body)


Handler = Callable[[socket.socket, Request, int], None]


def _read_request(conn: socket.socket) -> Request | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return Request(method, path, body)


@contextmanager
def scripted(handler: Handler, max_requests: int = 20) -> Iterator[tuple[str, list[Request]]]:
    """A raw loopback server: each connection's request goes to `handler(conn, request, index)`; it answers at most
    `max_requests` connections and waits at most 10 s for each, so it can never outlive a test by much."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(10)
    seen: list[Request] = []
    stop = threading.Event()

    def serve() -> None:
        for index in range(max_requests):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if stop.is_set():
                conn.close()
                return
            with conn:
                conn.settimeout(10)
                try:
                    request = _read_request(conn)
                    if request is not None:
                        seen.append(request)
                        handler(conn, request, index)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/predict", seen
    finally:
        stop.set()
        with contextlib.suppress(OSError):  # wake a blocked accept
            socket.create_connection(listener.getsockname(), timeout=1).close()
        thread.join(timeout=15)
        listener.close()


def send(conn: socket.socket, status: int, payload: object = None, headers: dict | None = None) -> None:
    body = b"" if payload is None else json.dumps(payload).encode()
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Content-Type: application/json",
             "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def reset(conn: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def proba(x: np.ndarray) -> list:
    z = np.asarray(x, dtype=np.float64)[:, :3] * 3
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).tolist()


def predicting(answer: Callable[[Request], object], info: dict = INFO) -> Handler:
    """GET answers `info`; POST answers whatever `answer(request)` returns."""
    def handler(conn: socket.socket, request: Request, index: int) -> None:
        send(conn, 200, info if request.method == "GET" else answer(request))
    return handler


def test_a_well_behaved_endpoint_works():
    with scripted(predicting(lambda r: {"probabilities": proba(r.json()["inputs"])})) as (url, _):
        target = load_http(url, client=FAST)
        assert np.allclose(target.probabilities(X).numpy(), proba(X), atol=1e-6)


def test_slow_drip_body_hits_the_deadline():
    def handler(conn: socket.socket, request: Request, index: int) -> None:
        if request.method == "GET":
            return send(conn, 200, INFO)
        body = json.dumps({"probabilities": proba(request.json()["inputs"])}).encode()
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        for byte in body:  # one byte every 50 ms: each read is quick, the whole answer is not
            conn.sendall(bytes([byte]))
            time.sleep(0.05)

    with scripted(handler) as (url, _):
        target = load_http(url, client=FAST)
        with pytest.raises(BastionError, match="deadline"):
            target.probabilities(X)


def test_slow_drip_headers_hit_the_deadline():
    def handler(conn: socket.socket, request: Request, index: int) -> None:
        for byte in b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 400:
            conn.sendall(bytes([byte]))
            time.sleep(0.05)

    with scripted(handler) as (url, _), pytest.raises(ModelLoadError, match="deadline"):
        load_http(url, client=FAST)


@pytest.mark.parametrize("answer, message", [
    ({"probabilities": [[float("nan"), 0.5, 0.5]] * 5}, "NaN"),
    ({"probabilities": [[-0.5, 1.0, 0.5]] * 5}, r"lie in \[0, 1\]"),
    ({"probabilities": [[0.9, 0.9, 0.9]] * 5}, "sum to 1"),
    ({"probabilities": [[0.2, 0.3, 0.5]] * 4}, "shape"),
    ({"probabilities": [[0.5, 0.5]] * 5}, "shape"),
    ({"probabilities": [["a", "b", "c"]] * 5}, "not an array of numbers"),
    ({"probabilities": [[1e400, 0, 0]] * 5}, "NaN or infinite"),
    ({"scores": []}, "lacks 'probabilities'"),
])
def test_bad_probabilities_are_refused(answer, message):
    with scripted(predicting(lambda r: answer)) as (url, _):
        target = load_http(url, client=FAST)
        with pytest.raises(BastionError, match=message):
            target.probabilities(X)


@pytest.mark.parametrize("labels, message", [
    ([0, 1, 2, 3, 0], r"in \[0, 2\]"), ([0, -1, 2, 1, 0], r"in \[0, 2\]"), ([0, 1.5, 2, 1, 0], "whole numbers"),
    ([0, 1, 2], "shape"), ([0, float("nan"), 1, 1, 0], "NaN"),
])
def test_bad_labels_are_refused(labels, message):
    info = {**INFO, "output": "labels"}
    with scripted(predicting(lambda r: {"labels": labels}, info)) as (url, _):
        target = load_http(url, client=FAST)
        with pytest.raises(BastionError, match=message):
            target.labels(X)


def test_logits_must_be_finite():
    info = {**INFO, "output": "logits"}
    infinite = predicting(lambda r: {"logits": [[float("inf"), 0, 0]] * 5}, info)
    with scripted(infinite) as (url, _), pytest.raises(BastionError, match="NaN or infinite"):
        load_http(url, client=FAST).logits(X)


@pytest.mark.parametrize("info, message", [
    ({**INFO, "input_shape": "abc"}, "input_shape"), ({**INFO, "n_classes": "ten"}, "n_classes"),
    ({**INFO, "n_classes": 10**30}, "n_classes"), ({**INFO, "bounds": [1, 0]}, "bounds"),
    ({**INFO, "input_shape": [10**6, 10**6]}, "elements"),
])
def test_bad_descriptions_are_refused(info, message):
    with scripted(predicting(lambda r: {}, info)) as (url, _), pytest.raises(ModelLoadError, match=message):
        load_http(url, client=FAST)


def test_redirect_to_another_port_is_not_followed():
    with scripted(predicting(lambda r: {"probabilities": proba(r.json()["inputs"])})) as (elsewhere, hits):
        def handler(conn: socket.socket, request: Request, index: int) -> None:
            if request.method == "GET":
                return send(conn, 200, INFO)
            send(conn, 307, headers={"Location": elsewhere})

        with scripted(handler) as (url, _):
            target = load_http(url, client=FAST)
            with pytest.raises(BastionError, match="another host"):
                target.probabilities(X)
        assert hits == []


def test_redirect_to_another_host_is_not_followed_even_for_get():
    def handler(conn: socket.socket, request: Request, index: int) -> None:
        send(conn, 302, headers={"Location": "http://attacker.invalid/predict"})

    with scripted(handler) as (url, _), pytest.raises(ModelLoadError, match="another host"):
        load_http(url, client=FAST)


def test_post_is_never_replayed_as_get():
    def handler(conn: socket.socket, request: Request, index: int) -> None:
        if request.method == "GET" and request.path == "/predict":
            return send(conn, 200, INFO)
        send(conn, 302, headers={"Location": "/other"})

    with scripted(handler) as (url, seen):
        target = load_http(url, client=FAST)
        with pytest.raises(BastionError, match="replay"):
            target.probabilities(X)
    assert [r.method for r in seen] == ["GET", "POST"]


def test_same_origin_307_keeps_the_post():
    def handler(conn: socket.socket, request: Request, index: int) -> None:
        if request.method == "GET":
            return send(conn, 200, INFO)
        if request.path == "/predict":
            return send(conn, 307, headers={"Location": "/v2/predict"})
        send(conn, 200, {"probabilities": proba(request.json()["inputs"])})

    with scripted(handler) as (url, seen):
        assert np.allclose(load_http(url, client=FAST).probabilities(X).numpy(), proba(X), atol=1e-6)
    assert [(r.method, r.path) for r in seen] == [("GET", "/predict"), ("POST", "/predict"),
                                                  ("POST", "/v2/predict")]


def test_503_then_success_is_retried():
    def handler(conn: socket.socket, request: Request, index: int) -> None:
        if request.method == "GET":
            return send(conn, 200, INFO)
        if index < 3:
            return send(conn, 503, {"error": "busy"}, {"Retry-After": "0"})
        send(conn, 200, {"probabilities": proba(request.json()["inputs"])})

    with scripted(handler) as (url, seen):
        target = load_http(url, client=HttpClient(timeout_s=5, retries=3, backoff_s=0.01))
        assert np.allclose(target.probabilities(X).numpy(), proba(X), atol=1e-6)
    assert sum(r.method == "POST" for r in seen) == 3


def test_retries_are_bounded():
    def handler(conn: socket.socket, request: Request, index: int) -> None:
        send(conn, 200, INFO) if request.method == "GET" else send(conn, 500)

    with scripted(handler) as (url, seen):
        target = load_http(url, client=FAST)
        with pytest.raises(BastionError, match=r"HTTP 500 \(gave up after 3 attempts\)"):
            target.probabilities(X)
    assert sum(r.method == "POST" for r in seen) == 3


def test_connection_reset_is_retried_then_reported():
    def flaky(conn: socket.socket, request: Request, index: int) -> None:
        if request.method == "GET":
            return send(conn, 200, INFO)
        if index == 1:
            return reset(conn)
        send(conn, 200, {"probabilities": proba(request.json()["inputs"])})

    with scripted(flaky) as (url, _):
        assert load_http(url, client=FAST).probabilities(X).shape == (5, 3)

    def always(conn: socket.socket, request: Request, index: int) -> None:
        send(conn, 200, INFO) if request.method == "GET" else reset(conn)

    with scripted(always) as (url, _), pytest.raises(BastionError, match="reset"):
        load_http(url, client=FAST).probabilities(X)


def test_responses_are_bounded_in_size():
    small = HttpClient(timeout_s=2, retries=0, max_bytes=2000)

    def declared(conn: socket.socket, request: Request, index: int) -> None:
        send(conn, 200, {**INFO, "pad": "x" * 5000})

    with scripted(declared) as (url, _), pytest.raises(ModelLoadError, match="larger than 2000"):
        load_http(url, client=small)

    def undeclared(conn: socket.socket, request: Request, index: int) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + json.dumps({**INFO, "p": "x" * 5000}).encode())

    with scripted(undeclared) as (url, _), pytest.raises(ModelLoadError, match="larger than 2000"):
        load_http(url, client=small)


def test_cli_reports_a_nan_endpoint_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    data = tmp_path / "d.npz"
    save_npz(Dataset(X, np.array([0, 1, 2, 0, 1])), data)
    nan = predicting(lambda r: {"probabilities": [[float("nan")] * 3] * len(r.json()["inputs"])})
    with scripted(nan) as (url, _), pytest.raises(SystemExit) as exit_info:
        run(["attack", "evasion", "square", url, "--data", str(data), "--eps", "0.1", "--json"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and "NaN" in err and "internal error" not in err
