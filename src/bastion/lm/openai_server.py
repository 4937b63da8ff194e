"""A minimal OpenAI-compatible server over any `LMTarget` (stdlib `http.server`), for tests and offline demos.

Serves `GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions` (non-streaming) on 127.0.0.1 by
default, with token usage and per-token log-probabilities when the wrapped target has them. One request at a time
(the wrapped model is not thread-safe); request bodies over 1 MiB are refused.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bastion.core.errors import BastionError
from bastion.lm.lm_target import LMTarget

MAX_REQUEST = 1 << 20


def _handler(target: LMTarget, name: str, lock: threading.Lock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, code: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_REQUEST:
                return self._send(413, {"error": {"message": "request body missing or too large"}})
            try:
                req = json.loads(self.rfile.read(length))
                max_tokens = int(req.get("max_tokens") or 64)
                with lock:
                    if self.path == "/v1/chat/completions":
                        reply = target.chat(req["messages"], max_new_tokens=max_tokens)
                        lp = {"content": [{"token": "", "logprob": x} for x in reply.logprobs or []]}
                        choice = {"index": 0, "message": {"role": "assistant", "content": reply.text}}
                    elif self.path == "/v1/completions":
                        reply = target.complete(req["prompt"], max_new_tokens=max_tokens)
                        lp = {"token_logprobs": list(reply.logprobs or [])}
                        choice = {"index": 0, "text": reply.text}
                    else:
                        return self._send(404, {"error": {"message": "not found"}})
            except (ValueError, KeyError, TypeError, BastionError) as exc:
                return self._send(400, {"error": {"message": str(exc)[:300]}})
            choice |= {"finish_reason": reply.finished, **({"logprobs": lp} if req.get("logprobs") else {})}
            usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                     "total_tokens": reply.prompt_tokens + reply.completion_tokens}
            self._send(200, {"id": "bastion", "object": "chat.completion", "model": name, "choices": [choice],
                             "usage": usage})

    return Handler


def serve_lm(target: LMTarget, host: str = "127.0.0.1", port: int = 0, name: str = "bastion-lm"
             ) -> tuple[ThreadingHTTPServer, str]:
    """Start serving `target` in a daemon thread; returns the server (call `.shutdown()`) and its `/v1` URL."""
    server = ThreadingHTTPServer((host, port), _handler(target, name, threading.Lock()))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}/v1"
