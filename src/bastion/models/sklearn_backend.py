"""scikit-learn models from `.skops` files: score access with `predict_proba`, labels otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bastion.core.data import Dataset
from bastion.core.errors import ModelLoadError
from bastion.core.target import FunctionTarget
from bastion.models.loader import resolve_shape_and_bounds
from bastion.models.metadata import ModelMetadata
from bastion.supplychain.code_formats import refuse_unless_trusted


def load_skops(path: Path, data: Dataset | None = None, bounds: tuple[float, float] | None = None,
               trust: bool = False, batch_size: int = 4096, max_queries: int | None = None,
               **_: object) -> FunctionTarget:
    """Trust comes from Bastion's scan of the schema: every type and function skops would import is judged by the
    scanner's allow-list (a package prefix proves nothing: numpy.load and numpy.savetxt are NumPy too). Any
    finding of medium severity or above refuses the load unless `trust`."""
    import skops.io as sio

    refuse_unless_trusted(path, "skops", trust, min_severity="medium")
    try:
        untrusted = sio.get_untrusted_types(file=str(path))
    except Exception as exc:  # skops raises zip, JSON and key errors for corrupt files
        raise ModelLoadError(f"{path}: corrupt .skops file ({type(exc).__name__})") from None
    try:
        estimator = sio.load(str(path), trusted=untrusted)
    except Exception as exc:  # noqa: BLE001 - any failure to rebuild is a bad file
        raise ModelLoadError(f"{path}: cannot load .skops file ({type(exc).__name__}: {exc})") from None
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        raise ModelLoadError(f"{path}: not a fitted classifier (no classes_)")
    if not np.array_equal(np.asarray(classes), np.arange(len(classes))):
        raise ModelLoadError(f"{path}: class labels must be 0..{len(classes) - 1}, got {list(classes)[:10]}")
    meta = ModelMetadata(n_classes=len(classes),
                         input_shape=[int(estimator.n_features_in_)] if hasattr(estimator, "n_features_in_") else None)
    shape, bounds = resolve_shape_and_bounds(meta, data, bounds, path)

    def flat(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1)

    if hasattr(estimator, "predict_proba"):
        target = FunctionTarget(lambda x: estimator.predict_proba(flat(x)), len(classes), shape, "probabilities",
                                bounds, batch_size=batch_size, name=path.name, max_queries=max_queries,
                                estimator=estimator)
    else:
        target = FunctionTarget(lambda x: estimator.predict(flat(x)), len(classes), shape, "labels", bounds,
                                batch_size=batch_size, name=path.name, max_queries=max_queries,
                                estimator=estimator)
    return target
