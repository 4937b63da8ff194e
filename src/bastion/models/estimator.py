"""A fitted scikit-learn classifier (from joblib or pickle, after a clean scan and `--trust`) as a Target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bastion.core.data import Dataset
from bastion.core.errors import ModelLoadError
from bastion.core.target import FunctionTarget
from bastion.models.loader import resolve_shape_and_bounds
from bastion.models.metadata import ModelMetadata


def is_estimator(obj: Any) -> bool:
    """A fitted classifier: `classes_` and `predict` (scikit-learn's duck type)."""
    return hasattr(obj, "classes_") and callable(getattr(obj, "predict", None))


def estimator_target(estimator: Any, path: Path, data: Dataset | None, bounds: tuple[float, float] | None,
                     batch_size: int | None = None, max_queries: int | None = None) -> FunctionTarget:
    """Scores through `predict_proba` when the classifier has it, labels through `predict` otherwise."""
    classes = np.asarray(estimator.classes_)
    if not np.array_equal(classes, np.arange(len(classes))):
        raise ModelLoadError(f"{path}: class labels must be 0..{len(classes) - 1}, got {list(classes)[:10]}")
    n_features = getattr(estimator, "n_features_in_", None)
    meta = ModelMetadata(n_classes=len(classes), input_shape=[int(n_features)] if n_features is not None else None)
    shape, bounds = resolve_shape_and_bounds(meta, data, bounds, path)

    def flat(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1)

    kind, answer = (("probabilities", estimator.predict_proba) if hasattr(estimator, "predict_proba")
                    else ("labels", estimator.predict))
    target = FunctionTarget(lambda x: answer(flat(x)), len(classes), shape, kind, bounds,
                            batch_size=batch_size or 4096, name=path.name, max_queries=max_queries,
                            estimator=estimator)
    return target
