"""Datasets: loading `.npz`, `.csv`, image folders and IDX files, and validating them against a model."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bastion.core.errors import DataError

if TYPE_CHECKING:
    from bastion.core.target import Target

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}
MAX_DATA_BYTES = 2 * 1024**3  # the largest array a data file may declare (npz member, IDX payload, image folder)
MAX_IDX_BYTES = MAX_DATA_BYTES
MAX_IMAGE_PIXELS = 50_000_000  # per image: larger ones are refused before they are decoded (decompression bombs)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


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


def load_dataset(path: str | Path, label: str | None = None, name: str | None = None,
                 classes: list[str] | None = None) -> Dataset:
    """Load `.npz` (arrays x, y), `.csv` (`label` column), an image folder, or an IDX image file.

    `classes` names the classes in the model's order: an image folder's labels follow it; other data gets (or is
    re-ordered to) these names."""
    data = _load_any(Path(path), label, name)
    if classes is not None:
        apply_classes(data, list(classes))
    return data


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


def _load_any(path: Path, label: str | None, name: str | None) -> Dataset:
    if not path.exists():
        raise DataError(f"data not found: {path}")
    if not path.is_dir() and not path.is_file():
        raise DataError(f"{path}: not a regular file or folder (a device, pipe or socket)")
    name = name or path.name
    if path.is_dir():
        if _idx_pair_in(path):
            return load_idx(_idx_pair_in(path), name=name)
        return load_image_folder(path, name=name)
    head = _read_head(path)
    if head.startswith(b"PK"):
        return load_npz(path, name=name)
    if _looks_like_idx(head):
        return load_idx(path, name=name)
    if path.suffix.lower() in {".csv", ".txt", ".tsv"}:
        return load_csv(path, label=label, name=name)
    raise DataError(f"{path}: unknown data format (expected .npz, .csv, an image folder or IDX files)")


def _read_head(path: Path, n: int = 8) -> bytes:
    with open(path, "rb") as f:
        head = f.read(n)
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(path, "rb") as g:
                return g.read(n)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip file ({exc})") from None
    return head


def load_npz(path: Path, name: str | None = None) -> Dataset:
    """`.npz` with arrays `x` and `y` (optional `class_names`). Object arrays are refused: they need pickle."""
    name = name or path.name
    check_npz_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if not {"x", "y"} <= keys:
                raise DataError(f"{path}: an .npz dataset needs arrays 'x' and 'y', found {sorted(keys)}")
            x, y = archive["x"], archive["y"]
            classes = [str(c) for c in archive["class_names"]] if "class_names" in keys else []
    except DataError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise DataError(f"{path}: object arrays are refused (loading them would unpickle)") from None
        raise DataError(f"{path}: corrupt .npz file ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError, zlib.error, NotImplementedError) as exc:
        raise DataError(f"{path}: corrupt .npz file ({exc})") from None
    if x.dtype.kind not in "fiub":
        raise DataError(f"{path}: 'x' must be numeric, got dtype {x.dtype}")
    return Dataset(x, y, name, classes)


def check_npz_sizes(path: Path, limit: int = MAX_DATA_BYTES) -> None:
    """Read only the `.npy` headers of an `.npz` and refuse arrays that declare more bytes than `limit`, or more
    than the member holds, before NumPy allocates anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if not member.filename.endswith(".npy"):
                    continue
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version in ((2, 0), (3, 0)):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    else:
                        raise DataError(f"{path}: {member.filename} has unknown .npy version {version}")
                    header = f.tell()
                declared = math.prod(shape) * dtype.itemsize
                if declared > limit:
                    raise DataError(f"{path}: {member.filename} declares an array of shape {shape} "
                                    f"({declared / 2**30:.1f} GiB), above the {limit / 2**30:.0f} GiB limit")
                if not dtype.hasobject and declared > member.file_size - header:
                    raise DataError(f"{path}: {member.filename} declares {declared} bytes of data but holds "
                                    f"{member.file_size - header}")
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
        raise DataError(f"{path}: corrupt .npz file ({str(exc).splitlines()[0] if str(exc) else exc!r})") from None


def load_csv(path: Path, label: str | None = None, name: str | None = None) -> Dataset:
    """CSV with a header row; `label` names the label column (default: the last column)."""
    name = name or path.name
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    if len(rows) < 2:
        raise DataError(f"{path}: a CSV dataset needs a header row and at least one data row")
    header, body = rows[0], [r for r in rows[1:] if r]
    column = header.index(label) if label in header else None
    if label is not None and column is None:
        raise DataError(f"{path}: no column named {label!r}; columns are {', '.join(header)}")
    column = len(header) - 1 if column is None else column
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: line {i} has {len(row)} fields, the header has {len(header)}")
    raw_labels = [r[column] for r in body]
    try:
        features = np.array([[float(v) for j, v in enumerate(r) if j != column] for r in body], dtype=np.float32)
    except ValueError as exc:
        raise DataError(f"{path}: non-numeric feature value ({exc})") from None
    try:
        labels = [int(v) for v in raw_labels]
        classes: list[str] = []
    except ValueError:
        labels = []
        classes = sorted(set(raw_labels))
        index = {c: i for i, c in enumerate(classes)}
        labels = [index[v] for v in raw_labels]
    if labels and not all(0 <= v < 2**31 for v in labels):
        raise DataError(f"{path}: labels must be whole numbers in [0, 2^31), found {min(labels)}..{max(labels)}")
    return Dataset(features, np.array(labels, dtype=np.int64), name, classes)


def class_folder_order(names: list[str]) -> list[str]:
    """Numeric folder names in numeric order (2 before 10), others alphabetically."""
    return sorted(names, key=int) if all(n.isdigit() for n in names) else sorted(names)


def load_image_folder(path: Path, name: str | None = None) -> Dataset:
    """One sub-folder per class; images become float32 in [0, 1], NCHW. All images must share one size.

    Numeric folder names go in numeric order, others alphabetically; `--classes` or the model's metadata (when
    it names its classes) then put the labels in the model's order (`apply_classes`, `align_classes`)."""
    from PIL import Image, UnidentifiedImageError

    name = name or path.name
    classes = class_folder_order([p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")])
    if not classes:
        raise DataError(f"{path}: an image folder needs one sub-folder per class")
    xs, ys, shape, total = [], [], None, 0
    for label, cls in enumerate(classes):
        for file in sorted((path / cls).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES or not file.is_file():
                continue
            try:
                with Image.open(file) as img:
                    width, height = img.size
                    if width * height > MAX_IMAGE_PIXELS:
                        raise DataError(f"{file}: image of {width}x{height} pixels is above the "
                                        f"{MAX_IMAGE_PIXELS} pixel limit (a decompression bomb?)")
                    total += width * height * 3 * 4
                    if total > MAX_DATA_BYTES:
                        raise DataError(f"{path}: the images add up to more than {MAX_DATA_BYTES / 2**30:.0f} GiB "
                                        "as float32")
                    img.load()
                    mode = "L" if img.mode in ("L", "1", "I", "I;16", "F") else "RGB"
                    arr = np.asarray(img.convert(mode), dtype=np.float32) / 255.0
            except DataError:
                raise
            except Image.DecompressionBombError:
                raise DataError(f"{file}: image above the {MAX_IMAGE_PIXELS} pixel limit (a decompression bomb?)"
                                ) from None
            except UnidentifiedImageError as exc:
                raise DataError(f"{file}: unreadable image ({exc})") from None
            except Exception as exc:  # noqa: BLE001 - image decoders raise many kinds of error on hostile files
                raise DataError(f"{file}: unreadable image ({type(exc).__name__}: {exc})") from None
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            if shape is None:
                shape = arr.shape
            elif arr.shape != shape:
                raise DataError(f"{file}: image shape {arr.shape} differs from {shape}; resize images first")
            xs.append(arr)
            ys.append(label)
    if not xs:
        raise DataError(f"{path}: no images found in the class folders")
    return Dataset(np.stack(xs), np.array(ys), name, classes)


def _looks_like_idx(head: bytes) -> bool:
    return len(head) >= 4 and head[0] == 0 and head[1] == 0 and head[2] in _IDX_DTYPES and 1 <= head[3] <= 4


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed): the MNIST family's array format."""
    opener = gzip.open if _read_raw_head(path).startswith(b"\x1f\x8b") else open
    try:
        with opener(path, "rb") as f:
            header = f.read(4)
            if not _looks_like_idx(header):
                raise DataError(f"{path}: not an IDX file")
            ndim = header[3]
            dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            dtype = np.dtype(_IDX_DTYPES[header[2]])
            size = math.prod(dims) * dtype.itemsize  # Python integers: dimensions cannot overflow
            if size > MAX_IDX_BYTES:
                raise DataError(f"{path}: IDX header declares {size} bytes, above the {MAX_IDX_BYTES} limit")
            payload = f.read(size)
    except (OSError, EOFError, struct.error, zlib.error) as exc:
        raise DataError(f"{path}: corrupt IDX file ({exc})") from None
    if len(payload) != size:
        raise DataError(f"{path}: truncated IDX file ({len(payload)} of {size} bytes)")
    return np.frombuffer(payload, dtype=dtype).reshape(dims)


def _read_raw_head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def _idx_labels_for(images: Path) -> Path | None:
    """Find the labels file beside an images file (`*-images-idx3-ubyte` -> `*-labels-idx1-ubyte`)."""
    for a, b in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1"), ("images", "labels")):
        if a in images.name:
            candidate = images.with_name(images.name.replace(a, b))
            if candidate.exists():
                return candidate
    return None


def _idx_pair_in(folder: Path) -> Path | None:
    for file in sorted(folder.iterdir()):
        if "images" in file.name and "idx3" in file.name and _idx_labels_for(file):
            return file
    return None


def load_idx(images: Path, labels: Path | None = None, name: str | None = None) -> Dataset:
    """IDX images (n, h, w) scaled to [0, 1] as (n, 1, h, w), with the labels file found beside them."""
    name = name or images.name
    labels = labels or _idx_labels_for(images)
    if labels is None:
        raise DataError(f"{images}: no labels file found beside it (expected a '*labels-idx1*' file)")
    x, y = read_idx(images), read_idx(labels)
    if x.ndim == 3:
        x = x[:, None]
    if len(x) != len(y):
        raise DataError(f"{images}: {len(x)} images but {len(y)} labels")
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    return Dataset(x.astype(np.float32) / scale, y.astype(np.int64), name)


def data_fingerprint(path: str | Path) -> str:
    """sha256 of a data file; for a folder, sha256 over each file's relative name and sha256, in sorted order."""
    path = Path(path)

    def file_sha256(file: Path) -> str:
        digest = hashlib.sha256()
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(os.fsencode(file.relative_to(path)) + b"\0" + file_sha256(file).encode() + b"\n")
    return digest.hexdigest()


def save_npz(data: Dataset, path: str | Path) -> None:
    """Write a dataset as `.npz` with arrays x, y (and class_names when set)."""
    arrays = {"x": data.x, "y": data.y}
    if data.class_names:
        arrays["class_names"] = np.array(data.class_names)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    Path(path).write_bytes(buf.getvalue())
