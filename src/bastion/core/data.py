"""The Dataset, and checking it against a model (shape, labels, bounds, class order). Reading data files is
`bastion.core.data_files` (npz, csv) and `bastion.core.image_data` (image folders, IDX)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bastion.core.errors import DataError

if TYPE_CHECKING:
    from bastion.core.target import Target

MAX_DATA_BYTES = 2 * 1024**3  # the largest array a data file may declare (npz member, IDX payload, image folder)


@dataclass
class Dataset:
    """Inputs `x` (float32, shape (n, *input_shape)) and integer labels `y` (int64, shape (n,))."""

    x: np.ndarray
    y: np.ndarray
    name: str = "data"
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.float32)
        self.y = np.asarray(self.y)
        if self.x.ndim < 2:
            raise DataError(f"{self.name}: inputs must have shape (n, features...), got {self.x.shape}")
        if self.y.ndim != 1 or len(self.y) != len(self.x):
            raise DataError(f"{self.name}: labels must have shape ({len(self.x)},), got {self.y.shape}")
        if self.y.dtype.kind == "f":
            if not np.all(np.isfinite(self.y)) or not np.all(self.y == np.round(self.y)):
                raise DataError(f"{self.name}: labels must be whole numbers")
        elif self.y.dtype.kind not in "iub":
            raise DataError(f"{self.name}: labels must be integers, got dtype {self.y.dtype}")
        self.y = self.y.astype(np.int64)
        if len(self.x) == 0:
            raise DataError(f"{self.name}: the dataset is empty")
        if not np.all(np.isfinite(self.x)):
            bad = int((~np.isfinite(self.x)).reshape(len(self.x), -1).any(axis=1).sum())
            raise DataError(f"{self.name}: {bad} samples contain NaN or infinite values")
        if self.y.min() < 0:
            raise DataError(f"{self.name}: labels must be non-negative, found {int(self.y.min())}")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def n_classes(self) -> int:
        return max(len(self.class_names), int(self.y.max()) + 1)

    def subset(self, index: np.ndarray | slice, name: str | None = None) -> Dataset:
        return Dataset(self.x[index], self.y[index], name or self.name, list(self.class_names))

    def head(self, n: int | None) -> Dataset:
        return self if n is None or n >= len(self) else self.subset(slice(0, n))

    def bounds(self) -> tuple[float, float]:
        """(0, 1) when every value lies there, else the data's own min and max."""
        lo, hi = float(self.x.min()), float(self.x.max())
        if lo >= 0.0 and hi <= 1.0:
            return (0.0, 1.0)
        return (lo, hi) if lo < hi else (lo, lo + 1.0)


def validate_for_model(data: Dataset, n_classes: int, input_shape: tuple[int, ...],
                       bounds: tuple[float, float] | None = None) -> None:
    """Raise DataError when the data does not fit a model: shape, label range, bounds."""
    if tuple(data.input_shape) != tuple(input_shape):
        raise DataError(f"{data.name}: input shape {data.input_shape} does not match the model's {tuple(input_shape)}")
    if int(data.y.max()) >= n_classes:
        raise DataError(
            f"{data.name}: label {int(data.y.max())} is out of range for a model with {n_classes} classes"
        )
    if len(data.class_names) > n_classes:
        raise DataError(f"{data.name}: {len(data.class_names)} classes but the model has {n_classes}")
    if bounds is not None:
        problem = bounds_problem(data, bounds)
        if problem:
            raise DataError(problem)


def check_fit(data: Dataset | None, target: Target) -> None:
    """Validate `data` (when given) against the target's classes and input shape."""
    if data is not None:
        validate_for_model(data, target.n_classes, target.input_shape)


# -- the data must be in the model's units and class order (issue 21: say it when the input is off) -------------
def bounds_problem(data: Dataset, bounds: tuple[float, float]) -> str | None:
    """Why `data` lies outside the model's input bounds, with the likely fix; None when it fits."""
    lo, hi = float(bounds[0]), float(bounds[1])
    dmin, dmax = float(data.x.min()), float(data.x.max())
    if dmin >= lo - 1e-6 and dmax <= hi + 1e-6:
        return None
    where = (f"{data.name}: values in [{dmin:.4g}, {dmax:.4g}] fall outside the model's bounds "
             f"[{lo:g}, {hi:g}]")
    if hi <= 1.0 + 1e-6 and dmin >= lo - 1e-6 and 1.0 < dmax <= 255.0 + 1e-6:
        return f"{where}: 8-bit pixel values? divide the data by 255"
    if lo >= 0.0 and dmin < 0.0:
        return (f"{where}: standardised data? give the model raw inputs and put the standardisation inside the "
                "model")
    return f"{where}: rescale the data to the model's bounds (or save the model with the bounds it accepts)"


def align_classes(data: Dataset, model_classes: list[str]) -> None:
    """Relabel `data` (in place) into the model's class order when both name their classes.

    Image folders name classes by their sub-folders; the model's metadata (or `--classes`) says which index
    each name has. Different names are an error that lists both, never a silent accuracy drop."""
    if not data.class_names or not model_classes or list(data.class_names) == list(model_classes):
        return
    unknown = [c for c in data.class_names if c not in model_classes]
    if unknown:
        raise DataError(f"{data.name}: classes {unknown} are not among the model's classes {list(model_classes)} "
                        "(rename the folders, or pass --classes in the model's order)")
    index = {name: i for i, name in enumerate(model_classes)}
    mapping = np.array([index[name] for name in data.class_names], dtype=np.int64)
    data.y = mapping[np.asarray(data.y, dtype=np.int64)]
    data.class_names = list(model_classes)


def apply_classes(data: Dataset, classes: list[str]) -> None:
    """Name `data`'s classes in this order (`--classes`): named data is re-labelled, unnamed data gets names."""
    if data.class_names:
        if sorted(data.class_names) != sorted(classes):
            raise DataError(f"{data.name}: --classes {classes} does not match the data's classes "
                            f"{list(data.class_names)}")
        align_classes(data, classes)
    elif len(classes) < int(data.y.max()) + 1:
        raise DataError(f"{data.name}: --classes names {len(classes)} classes but labels go up to "
                        f"{int(data.y.max())}")
    else:
        data.class_names = list(classes)


def save_npz(data: Dataset, path: str | Path) -> None:
    """Write a dataset as `.npz` with arrays x, y (and class_names when set)."""
    arrays = {"x": data.x, "y": data.y}
    if data.class_names:
        arrays["class_names"] = np.array(data.class_names)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    Path(path).write_bytes(buf.getvalue())
