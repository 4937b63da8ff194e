"""Image data: a folder of images (one sub-folder per class) and IDX files (MNIST's format), both bounded in
size before anything is decoded."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from bastion.core.data import MAX_DATA_BYTES, Dataset
from bastion.core.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}
MAX_IDX_BYTES = MAX_DATA_BYTES
MAX_IMAGE_PIXELS = 50_000_000  # per image: larger ones are refused before they are decoded (decompression bombs)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


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


def looks_like_idx(head: bytes) -> bool:
    return len(head) >= 4 and head[0] == 0 and head[1] == 0 and head[2] in _IDX_DTYPES and 1 <= head[3] <= 4


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed): the MNIST family's array format."""
    opener = gzip.open if _read_raw_head(path).startswith(b"\x1f\x8b") else open
    try:
        with opener(path, "rb") as f:
            header = f.read(4)
            if not looks_like_idx(header):
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


def idx_pair_in(folder: Path) -> Path | None:
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
