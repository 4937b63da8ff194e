"""ONNX models through onnxruntime: score access (or labels when the graph outputs labels only)."""

from __future__ import annotations

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
    input_name = session.get_inputs()[0].name
    outputs = session.get_outputs()

    def run(x: np.ndarray) -> list:
        return session.run(None, {input_name: x.astype(np.float32)})

    probe = run(np.zeros((1, *shape), np.float32))
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
