"""HTTP prediction endpoints (protocol in docs/http-protocol.md).

`GET URL` answers `{"n_classes", "input_shape", "output": "probabilities"|"logits"|"labels", "bounds"?}`;
`POST URL` with `{"inputs": [...]}` answers `{"probabilities": [[...]]}`, `{"logits": [[...]]}` or `{"labels": [...]}`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from bastion.core.data import Dataset
from bastion.core.errors import BastionError, ModelLoadError
from bastion.core.target import FunctionTarget

TIMEOUT_S = 30
MAX_RESPONSE_BYTES = 256 * 1024 * 1024


def _call(url: str, payload: dict | None = None) -> Any:
    body = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=body, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            raw = response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise BastionError(f"{url}: endpoint answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise BastionError(f"{url}: endpoint unreachable ({getattr(exc, 'reason', exc)})") from None
    if len(raw) > MAX_RESPONSE_BYTES:
        raise BastionError(f"{url}: response larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        return json.loads(raw)
    except ValueError:
        raise BastionError(f"{url}: endpoint did not answer JSON") from None


def load_http(url: str, data: Dataset | None = None, bounds: tuple[float, float] | None = None,
              batch_size: int = 256, **_: object) -> FunctionTarget:
    url = str(url)
    try:
        info = _call(url)
    except BastionError as exc:
        raise ModelLoadError(str(exc)) from None
    if not isinstance(info, dict) or "n_classes" not in info or info.get("output") not in (
            "probabilities", "logits", "labels"):
        raise ModelLoadError(f"{url}: GET must answer n_classes, input_shape and output (see docs/http-protocol.md)")
    shape = tuple(info.get("input_shape") or (data.input_shape if data is not None else ()))
    if not shape:
        raise ModelLoadError(f"{url}: the endpoint does not state input_shape; pass --data")
    bounds = bounds or tuple(info.get("bounds") or (data.bounds() if data is not None else (0.0, 1.0)))
    output = info["output"]

    def predict(x: np.ndarray) -> np.ndarray:
        answer = _call(url, {"inputs": x.tolist()})
        if not isinstance(answer, dict) or output not in answer:
            raise BastionError(f"{url}: response lacks '{output}'")
        return np.asarray(answer[output], dtype=np.int64 if output == "labels" else np.float32)

    return FunctionTarget(predict, int(info["n_classes"]), shape, output, bounds, batch_size=batch_size, name=url)
