"""The server side of Bastion's HTTP protocol (docs/http-protocol.md), standard library only.

`make_server(predict, info)` answers GET with `info` and POST {"inputs": [...]} with {info["output"]: predict(x)};
`serving(...)` runs one on a background thread for the length of a `with` block and yields its URL.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]


class _Server(ThreadingHTTPServer):
    """The standard library's threading server with a listen backlog of 128 instead of socketserver's 5: under
    load a full backlog drops connections, and each dropped one costs its client a 1 s SYN retransmission."""

    request_queue_size = 128


def make_server(predict: Predict, info: dict, host: str = "127.0.0.1", port: int = 0,
                quiet: bool = True) -> ThreadingHTTPServer:
    """An HTTP server (not started) for `predict`, which maps float32 inputs to the outputs info["output"] names."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: every answer carries its Content-Length
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK wait

        def log_message(self, *args: object) -> None:
            if not quiet:
                super().log_message(*args)  # type: ignore[arg-type]

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
            except (ValueError, KeyError, TypeError):
                self._send(400, {"error": 'expected {"inputs": [...]}'})
                return
            self._send(200, {info["output"]: np.asarray(predict(inputs)).tolist()})

    return _Server((host, port), Handler)


@contextmanager
def serving(predict: Predict, info: dict, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `predict` on a background thread and yield its URL; stop on exit."""
    server = make_server(predict, info, host, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/predict"
    finally:
        server.shutdown()
        server.server_close()
