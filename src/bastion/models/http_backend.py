"""HTTP prediction endpoints (protocol in docs/http-protocol.md).

`GET URL` answers `{"n_classes", "input_shape", "output": "probabilities"|"logits"|"labels", "bounds"?}`;
`POST URL` with `{"inputs": [...]}` answers `{"probabilities": [[...]]}`, `{"logits": [[...]]}` or `{"labels": [...]}`.

The endpoint is hostile until its answers are checked: one deadline covers each whole request (connect, headers
and a body that may drip in byte by byte), 5xx answers and connection resets are retried a bounded number of
times with exponential backoff, redirects never leave the URL's scheme, host and port (and a POST is never
replayed as a GET), answers are bounded in size, and every prediction is validated (finite numbers, probabilities
in [0, 1] summing to 1, labels in range, one row per input and one column per class).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import numpy as np

from bastion.core.data import Dataset
from bastion.core.errors import BastionError, BudgetSpent, ModelLoadError
from bastion.core.target import FunctionTarget
from bastion.models.metadata import check_bounds, check_input_shape, check_n_classes

OUTPUT_KINDS = ("probabilities", "logits", "labels")
PROBABILITY_TOLERANCE = 0.01  # rows of rounded probabilities still pass; unnormalised scores do not
REDIRECTS = (301, 302, 303, 307, 308)
_RESETS = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, http.client.IncompleteRead,
           http.client.BadStatusLine)


class EndpointError(BastionError):
    """An HTTP endpoint failed, misbehaved or answered something that is not a valid prediction."""


class EndpointRefused(BudgetSpent):
    """The endpoint refused to answer: a guard's block (403), rate limit or budget (429), key (401) or input
    rejection (422). An attack stops there like at a spent budget and keeps what it measured (`Result.status`
    partial, `reason` this message, which carries the status and the server's one-line reason)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


REFUSALS = (401, 403, 422, 429)


class _Retryable(EndpointError):
    """A failure worth another try: a 5xx status or a reset connection."""

    def __init__(self, message: str, wait_s: float | None = None, refusal: EndpointRefused | None = None):
        super().__init__(message)
        self.wait_s, self.refusal = wait_s, refusal


@dataclass(frozen=True)
class HttpClient:
    """How Bastion talks to an endpoint: `timeout_s` is the deadline of one whole request (each retry gets its own),
    `retries` the extra attempts after a 5xx or a reset, spaced `backoff_s * 2**k` seconds apart (or the server's
    Retry-After, capped at `max_wait_s`), `max_bytes` the largest answer read."""

    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 0.5
    max_wait_s: float = 10.0
    max_bytes: int = 256 * 1024 * 1024
    max_redirects: int = 3

    def get(self, url: str) -> Any:
        return self._json(url, None)

    def post(self, url: str, payload: dict) -> Any:
        return self._json(url, json.dumps(payload).encode())

    def _json(self, url: str, body: bytes | None) -> Any:
        raw = self._with_retries(url, body)
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise EndpointError(f"{url}: endpoint did not answer JSON") from None

    def _with_retries(self, url: str, body: bytes | None) -> bytes:
        for attempt in range(self.retries + 1):
            try:
                return self._follow(url, body)
            except _Retryable as exc:
                if attempt == self.retries:
                    if exc.refusal is not None:  # still rate-limited after waiting as asked: refused
                        raise exc.refusal from None
                    raise EndpointError(f"{exc} (gave up after {self.retries + 1} attempts)") from None
                wait = self.backoff_s * 2**attempt if exc.wait_s is None else exc.wait_s
                time.sleep(min(wait, self.max_wait_s))
        raise AssertionError("unreachable")

    def _follow(self, url: str, body: bytes | None) -> bytes:
        """One attempt: the request, then same-origin redirects (307/308 keep the method; a POST is never turned
        into a GET)."""
        origin = _origin(url)
        current = url
        for _ in range(self.max_redirects + 1):
            status, location, raw = self._once(current, body)
            if status not in REDIRECTS:
                return raw
            if not location:
                raise EndpointError(f"{url}: endpoint answered HTTP {status} without a Location")
            target = urllib.parse.urljoin(current, location)
            if _origin(target) != origin:
                raise EndpointError(f"{url}: endpoint redirects to another host ({_origin(target)}); refused")
            if body is not None and status not in (307, 308):
                raise EndpointError(f"{url}: endpoint answered a POST with HTTP {status}, which would replay it as a "
                                    "GET; refused")
            current = target
        raise EndpointError(f"{url}: more than {self.max_redirects} redirects")

    def _once(self, url: str, body: bytes | None) -> tuple[int, str | None, bytes]:
        """Send one request and read the whole answer before the deadline: (status, Location, body)."""
        deadline = time.monotonic() + self.timeout_s
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = kind(host, parts.port, timeout=self.timeout_s)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        expired = threading.Event()

        def cut() -> None:  # the deadline passed: unblock whatever read is waiting
            expired.set()
            if conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)

        watchdog = threading.Timer(self.timeout_s, cut)
        watchdog.daemon = True
        watchdog.start()
        try:
            headers = {"Accept": "application/json", "Connection": "close"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            conn.request("GET" if body is None else "POST", path, body=body, headers=headers)
            response = conn.getresponse()
            status = response.status
            if status >= 500:
                raise _Retryable(f"{url}: endpoint answered HTTP {status}", _retry_after(response))
            if status in REDIRECTS:
                return status, response.getheader("Location"), b""
            if status in REFUSALS:
                refusal = EndpointRefused(f"{redacted(url)}: endpoint refused the request with HTTP {status}"
                                          f"{_reason(response)}", status)
                wait = _retry_after(response)
                if status == 429 and wait is not None and wait <= self.max_wait_s:  # throttled: wait as asked
                    raise _Retryable(str(refusal), wait, refusal)
                raise refusal
            if status != 200:
                raise EndpointError(f"{url}: endpoint answered HTTP {status}")
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.max_bytes:
                raise EndpointError(f"{url}: response larger than {self.max_bytes} bytes")
            return status, None, self._read(response, url, deadline, expired)
        except _RESETS as exc:
            if expired.is_set():
                raise self._late(url) from None
            raise _Retryable(f"{url}: connection reset by the endpoint ({type(exc).__name__})") from None
        except TimeoutError:
            raise self._late(url) from None
        except OSError as exc:
            if expired.is_set():
                raise self._late(url) from None
            raise EndpointError(f"{url}: endpoint unreachable ({exc.strerror or exc})") from None
        except (http.client.HTTPException, ValueError) as exc:
            if expired.is_set():
                raise self._late(url) from None
            raise EndpointError(f"{url}: malformed HTTP answer ({type(exc).__name__})") from None
        finally:
            watchdog.cancel()
            conn.close()

    def _read(self, response: http.client.HTTPResponse, url: str, deadline: float, expired: threading.Event) -> bytes:
        chunks, size = [], 0
        while True:
            if expired.is_set() or time.monotonic() > deadline:
                raise self._late(url)
            chunk = response.read1(65536)
            if not chunk:
                if expired.is_set():
                    raise self._late(url)
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_bytes:
                raise EndpointError(f"{url}: response larger than {self.max_bytes} bytes")
            chunks.append(chunk)

    def _late(self, url: str) -> EndpointError:
        return EndpointError(f"{url}: no complete answer within the {self.timeout_s:g} s deadline")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = None
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def _retry_after(response: http.client.HTTPResponse) -> float | None:
    value = (response.getheader("Retry-After") or "").strip()
    return float(value) if value.isdigit() else None


def redacted(url: str) -> str:
    """`url` with the value of an `api_key` query parameter hidden (a refusal's reason ends up in reports)."""
    parts = urllib.parse.urlsplit(url)
    if "api_key=" not in parts.query:
        return url
    query = "&".join("api_key=***" if q.startswith("api_key=") else q for q in parts.query.split("&"))
    return urllib.parse.urlunsplit(parts._replace(query=query))


def _reason(response: http.client.HTTPResponse) -> str:
    """': <the server's one-line reason>' from a small JSON error body ({"error": "..."} or OpenAI's
    {"error": {"message": "..."}}), or nothing."""
    with contextlib.suppress(Exception):
        answer = json.loads(response.read(4096))
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(error, dict):
            error = error.get("message")
        if isinstance(error, str) and error.strip():
            return ": " + " ".join(error.split())[:200]
    return ""


def check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    try:
        _ = parts.port
    except ValueError:
        raise ModelLoadError(f"{url}: bad port in the URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelLoadError(f"{url}: not an http(s) URL with a host")


def rounding_slack(values: np.ndarray) -> float:
    """How far from 1 a row of probabilities rounded to D decimals may sum (half a unit of the last decimal per
    class, at most 0.5): a rounding defense (a guard's `rounding:2`) sends such rows. 0 if the values are not all
    multiples of 10^-D for some D <= 4."""
    for decimals in range(5):
        scaled = values * 10.0**decimals
        if np.allclose(scaled, np.round(scaled), rtol=0, atol=1e-4):
            return min(0.5, 0.5 * 10.0**-decimals * values.shape[-1])
    return 0.0


def validate_output(answer: Any, output: str, n: int, n_classes: int, url: str) -> np.ndarray:
    """The endpoint's prediction for `n` inputs as an array, or an EndpointError saying what is wrong with it."""
    if not isinstance(answer, dict) or output not in answer:
        raise EndpointError(f"{url}: response lacks '{output}'")
    try:
        values = np.asarray(answer[output], dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise EndpointError(f"{url}: '{output}' is not an array of numbers") from None
    expected = (n,) if output == "labels" else (n, n_classes)
    if values.shape != expected:
        raise EndpointError(f"{url}: '{output}' has shape {values.shape} for {n} inputs, expected {expected}")
    if not np.all(np.isfinite(values)):
        raise EndpointError(f"{url}: '{output}' contains NaN or infinite values")
    if output == "labels":
        if not np.all(values == np.round(values)) or values.min() < 0 or values.max() >= n_classes:
            raise EndpointError(f"{url}: labels must be whole numbers in [0, {n_classes - 1}], got values in "
                                f"[{values.min():g}, {values.max():g}]")
        return values.astype(np.int64)
    if output == "probabilities":
        if values.min() < -PROBABILITY_TOLERANCE or values.max() > 1 + PROBABILITY_TOLERANCE:
            raise EndpointError(f"{url}: probabilities must lie in [0, 1], got values in "
                                f"[{values.min():g}, {values.max():g}]")
        sums = values.sum(axis=1)
        worst = float(np.abs(sums - 1).max())
        if worst > max(PROBABILITY_TOLERANCE * max(1, n_classes / 100), rounding_slack(values)):
            raise EndpointError(f"{url}: probabilities must sum to 1 for each input; one row sums to "
                                f"{sums[np.abs(sums - 1).argmax()]:g}")
        values = np.clip(values, 0.0, 1.0)
    if np.abs(values).max() > np.finfo(np.float32).max:
        raise EndpointError(f"{url}: '{output}' values overflow float32")
    return values.astype(np.float32)


def load_http(url: str, data: Dataset | None = None, bounds: tuple[float, float] | None = None,
              batch_size: int = 256, client: HttpClient | None = None, max_queries: int | None = None,
              **_: object) -> FunctionTarget:
    """A black-box target answered by the endpoint at `url` (its GET answer describes it)."""
    url, client = str(url), client or HttpClient()
    check_url(url)
    try:
        info = client.get(url)
    except BastionError as exc:
        raise ModelLoadError(str(exc)) from None
    if not isinstance(info, dict) or "n_classes" not in info or info.get("output") not in OUTPUT_KINDS:
        raise ModelLoadError(f"{url}: GET must answer n_classes, input_shape and output (see docs/http-protocol.md)")
    where = f"{url}: GET answer"
    n_classes = check_n_classes(info["n_classes"], where)
    if info.get("input_shape") is not None:
        shape = tuple(check_input_shape(info["input_shape"], where))
    elif data is not None:
        shape = data.input_shape
    else:
        raise ModelLoadError(f"{url}: the endpoint does not state input_shape; pass --data")
    if bounds is None:
        bounds = (tuple(check_bounds(info["bounds"], where)) if info.get("bounds") is not None
                  else data.bounds() if data is not None else (0.0, 1.0))
    output = info["output"]

    def predict(x: np.ndarray) -> np.ndarray:
        return validate_output(client.post(url, {"inputs": x.tolist()}), output, len(x), n_classes, url)

    return FunctionTarget(predict, n_classes, shape, output, bounds, batch_size=batch_size, name=redacted(url),
                          max_queries=max_queries)
