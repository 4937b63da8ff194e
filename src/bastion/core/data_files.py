"""Reading data files: `.npz` (arrays x, y), `.csv` (a label column), and the dispatch by content that also
hands image folders and IDX files to `bastion.core.image_data`; plus a data fingerprint for the run store."""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from bastion.core.data import MAX_DATA_BYTES, Dataset, apply_classes
from bastion.core.errors import DataError
from bastion.core.image_data import idx_pair_in, load_idx, load_image_folder, looks_like_idx


def load_dataset(path: str | Path, label: str | None = None, name: str | None = None,
                 classes: list[str] | None = None) -> Dataset:
    """Load `.npz` (arrays x, y), `.csv` (`label` column), an image folder, or an IDX image file.

    `classes` names the classes in the model's order: an image folder's labels follow it; other data gets (or is
    re-ordered to) these names."""
    data = _load_any(Path(path), label, name)
    if classes is not None:
        apply_classes(data, list(classes))
    return data


def _load_any(path: Path, label: str | None, name: str | None) -> Dataset:
    if not path.exists():
        raise DataError(f"data not found: {path}")
    if not path.is_dir() and not path.is_file():
        raise DataError(f"{path}: not a regular file or folder (a device, pipe or socket)")
    name = name or path.name
    if path.is_dir():
        if idx_pair_in(path):
            return load_idx(idx_pair_in(path), name=name)
        return load_image_folder(path, name=name)
    head = _read_head(path)
    if head.startswith(b"PK"):
        return load_npz(path, name=name)
    if looks_like_idx(head):
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
