"""Serve a TorchScript model over Bastion's HTTP protocol (docs/http-protocol.md), standard library only.

    python examples/http_server.py MODEL.pt --port 8000 [--labels-only]
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--labels-only", action="store_true", help="answer labels instead of probabilities")
    args = parser.parse_args()
    extra = {"bastion.json": ""}
    model = torch.jit.load(args.model, map_location="cpu", _extra_files=extra).eval()
    meta = json.loads(extra["bastion.json"] or "{}")
    output = "labels" if args.labels_only else "probabilities"
    info = {"n_classes": meta.get("n_classes"), "input_shape": meta.get("input_shape"), "output": output,
            "bounds": meta.get("bounds") or [0, 1]}

    class Handler(BaseHTTPRequestHandler):
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
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                x = torch.tensor(request["inputs"], dtype=torch.float32)
            except (ValueError, KeyError, TypeError):
                self._send(400, {"error": "expected {\"inputs\": [...]}"})
                return
            with torch.no_grad():
                probs = model(x).softmax(-1)
            answer = probs.argmax(-1).tolist() if args.labels_only else probs.tolist()
            self._send(200, {output: answer})

    print(f"serving {args.model} on http://127.0.0.1:{args.port}/predict")
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
