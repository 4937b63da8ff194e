"""ONNX models through onnxruntime: score access (or labels when the graph outputs labels only)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from bastion.core.data import Dataset
from bastion.core.errors import ModelLoadError
from bastion.core.target import FunctionTarget
from bastion.models.loader import resolve_shape_and_bounds
from bastion.models.metadata import METADATA_KEY, ModelMetadata


def load_onnx(path: Path, data: Dataset | None = None, bounds: tuple[float, float] | None = None,
              batch_size: int = 512, max_queries: int | None = None, **_: object) -> FunctionTarget:
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 0
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for invalid graphs
        raise ModelLoadError(f"{path}: invalid ONNX model ({str(exc).splitlines()[0][:200]})") from None
    meta = ModelMetadata.from_json(session.get_modelmeta().custom_metadata_map.get(METADATA_KEY))
    if meta.input_shape is None and data is None:
        static = session.get_inputs()[0].shape[1:]
        if all(isinstance(d, int) for d in static):
            meta.input_shape = list(static)
    shape, bounds = resolve_shape_and_bounds(meta, data, bounds, path)
    input_name, batch = session.get_inputs()[0].name, session.get_inputs()[0].shape[0]
    outputs = session.get_outputs()
    fixed = batch if isinstance(batch, int) and batch > 0 else None  # a graph exported with a static batch size

    def run(x: np.ndarray) -> list:
        x = x.astype(np.float32)
        if fixed is None or len(x) == fixed:
            return session.run(None, {input_name: x})
        return fixed_batches(lambda chunk: session.run(None, {input_name: chunk}), x, fixed)

    try:
        probe = run(np.zeros((1, *shape), np.float32))
    except Exception as exc:  # onnxruntime's own exception types: the graph does not take these inputs
        raise ModelLoadError(f"{path}: the ONNX model fails on inputs of shape {tuple(shape)} "
                             f"({str(exc).splitlines()[0][:200]})") from None
    score_index = next((i for i, o in enumerate(probe) if isinstance(o, np.ndarray) and o.ndim == 2
                        and o.dtype.kind == "f"), None)
    if score_index is None:
        label_index = next((i for i, o in enumerate(probe) if isinstance(o, np.ndarray) and o.ndim == 1), None)
        if label_index is None or meta.n_classes is None and data is None:
            raise ModelLoadError(f"{path}: no score or label output among {[o.name for o in outputs]}")
        n_classes = meta.n_classes or data.n_classes
        return FunctionTarget(lambda x: run(x)[label_index], n_classes, shape, "labels", bounds,
                              batch_size=batch_size, name=path.name, max_queries=max_queries)
    sample = data.x[: min(len(data), 64)] if data is not None else np.zeros((1, *shape), np.float32)
    scores = run(sample)[score_index]
    is_prob = bool(np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3))
    return FunctionTarget(lambda x: run(x)[score_index], meta.n_classes or scores.shape[1], shape,
                          "probabilities" if is_prob else "logits", bounds, batch_size=batch_size, name=path.name,
                          max_queries=max_queries)


def fixed_batches(run: Callable[[np.ndarray], list], x: np.ndarray, size: int) -> list:
    """`run` over `x` in chunks of exactly `size` rows (the last one padded by repeating its last row), outputs
    concatenated and cut back to `len(x)` rows."""
    parts = []
    for start in range(0, len(x), size):
        chunk = x[start:start + size]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
        parts.append([out[:len(chunk)] for out in run(padded)])
    return [np.concatenate([p[i] for p in parts]) if isinstance(parts[0][i], np.ndarray)
            else [row for p in parts for row in p[i]] for i in range(len(parts[0]))]
