"""A tiny prediction server on 127.0.0.1 that speaks Bastion's HTTP protocol (docs/http-protocol.md)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


@contextmanager
def serve(predict: Callable[[np.ndarray], np.ndarray], info: dict) -> Iterator[str]:
    """Serve `predict` (inputs -> outputs named by info['output']) and yield its URL; stop on exit."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def _send(self, status: int, payload: object) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._send(200, info)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            try:
                inputs = np.asarray(json.loads(self.rfile.read(length))["inputs"], dtype=np.float32)
            except (ValueError, KeyError):
                self._send(400, {"error": "bad request"})
                return
            self._send(200, {info["output"]: np.asarray(predict(inputs)).tolist()})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/predict"
    finally:
        server.shutdown()
        server.server_close()
