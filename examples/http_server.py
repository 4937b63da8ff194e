"""Serve a TorchScript model over Bastion's HTTP protocol (docs/http-protocol.md).

    python examples/http_server.py MODEL.pt --port 8000 [--labels-only]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from bastion.models.http_server import make_server


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

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            probs = model(torch.from_numpy(x)).softmax(-1)
        return (probs.argmax(-1) if args.labels_only else probs).numpy()

    print(f"serving {args.model} on http://127.0.0.1:{args.port}/predict")
    make_server(predict, info, port=args.port, quiet=False).serve_forever()


if __name__ == "__main__":
    main()
