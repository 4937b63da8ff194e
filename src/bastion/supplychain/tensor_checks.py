"""Header validation for the tensor formats that carry no code: NumPy .npy (unless it holds objects) and
safetensors (https://github.com/huggingface/safetensors format description: u64 header length, JSON header of
dtype/shape/data_offsets, contiguous data)."""

from __future__ import annotations

import ast
import io
import json
import struct
import tokenize
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.core.errors import ModelLoadError
from bastion.supplychain.verdicts import Cursor

_ST_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
             "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
             "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75}


MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the largest header a loader reads


def read_safetensors_header(path: str | Path) -> dict:
    """The JSON header of a safetensors file, bounded in size."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_SAFETENSORS_HEADER:
            raise ModelLoadError(f"{path}: safetensors header of {n} bytes is too large")
        try:
            return json.loads(f.read(n))
        except ValueError as exc:
            raise ModelLoadError(f"{path}: corrupt safetensors header ({exc})") from None


def looks_like_safetensors(data: Any, size: int | None = None) -> bool:
    """A u64 header length that fits the file (`size`, default len(data)) followed by a JSON object."""
    if len(data) < 10:
        return False
    n = struct.unpack_from("<Q", data, 0)[0]
    return 2 <= n <= min((len(data) if size is None else size) - 8, MAX_SAFETENSORS_HEADER) and data[8:9] == b"{"


def check_safetensors(data: Any, cur: Cursor) -> None:
    """Validate the header: every tensor's byte range matches its dtype and shape, ranges tile the data."""
    problem = _safetensors_problem(data, cur.limits.max_header_bytes)
    if problem:
        cur.report("safetensors-header", "medium", f"invalid safetensors header: {problem}", offset=0)


def _safetensors_problem(data: Any, max_header: int) -> str | None:
    n = struct.unpack_from("<Q", data, 0)[0]
    if n > max_header:
        return f"header of {n} bytes is larger than the {max_header}-byte limit"
    try:
        header = json.loads(bytes(data[8:8 + n]))
    except (ValueError, RecursionError):
        return "header is not valid JSON"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        return "__metadata__ must map strings to strings"
    body = len(data) - 8 - n
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) - {"dtype", "shape", "data_offsets"}:
            return f"tensor {name!r} entry is malformed"
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _ST_SIZES:
            return f"tensor {name!r} has unknown dtype {dtype!r}"
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            return f"tensor {name!r} has an invalid shape"
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= body):
            return f"tensor {name!r} has data offsets outside the file"
        count = 1
        for d in shape:
            count *= d
        if offsets[1] - offsets[0] != count * _ST_SIZES[dtype]:
            return f"tensor {name!r} byte range does not match its dtype and shape"
        spans.append(offsets)
    end = 0
    for start, stop in sorted(spans):
        if start != end:
            return "tensor byte ranges overlap or leave gaps"
        end = stop
    if end != body:
        return f"data section holds {body} bytes but the tensors cover {end}"
    return None


def npy_dtype(data: Any, max_header: int) -> tuple[Any, int]:
    """The dtype of a .npy file and the offset of its array data, read by NumPy's own header readers (so every
    header np.load accepts, Python-2 headers included, is read the same way). ValueError when malformed."""
    import numpy.lib.format as npy_format

    if bytes(data[:6]) != b"\x93NUMPY" or len(data) < 10:
        raise ValueError("missing NumPy magic")
    major = data[6]
    if major == 1:
        n, start = struct.unpack_from("<H", data, 8)[0], 10
    elif major in (2, 3):
        if len(data) < 12:
            raise ValueError("truncated header")
        n, start = struct.unpack_from("<I", data, 8)[0], 12
    else:
        raise ValueError(f"unknown .npy version {major}")
    if n > max_header or start + n > len(data):
        raise ValueError("header length is out of bounds")
    if major == 3:  # utf-8 header, read without NumPy's Python-2 fallback (as NumPy does)
        header = _literal_header(bytes(data[start:start + n]).decode("utf-8", "replace"))
        return npy_format.descr_to_dtype(header["descr"]), start + n
    fp = io.BytesIO(bytes(data[:start + n]))
    fp.seek(8)
    reader = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NumPy warns when it falls back to parsing a Python-2 header
            _, _, dtype = reader(fp, max_header_size=max_header)
    except (SyntaxError, TypeError, KeyError, IndexError, AttributeError, RecursionError, MemoryError,
            tokenize.TokenError) as exc:  # NumPy tokenizes Python-2 headers
        raise ValueError(f"header cannot be read ({type(exc).__name__})") from None
    return dtype, start + n


def _literal_header(text: str) -> dict:
    if text.count("(") + text.count("[") > 256:
        raise ValueError("header nests too deeply")
    try:
        header = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise ValueError("header is not a Python literal") from None
    if not isinstance(header, dict) or {"descr", "fortran_order", "shape"} - set(header):
        raise ValueError("header lacks descr, fortran_order or shape")
    return header


def check_npy(data: Any, cur: Cursor, scan_pickle: Callable[[Any, Cursor, int], None]) -> None:
    """Object arrays are pickles after the header: report them and scan that pickle."""
    try:
        dtype, start = npy_dtype(data, cur.limits.max_header_bytes)
    except (ValueError, TypeError) as exc:
        cur.report("malformed", "medium", f"NumPy header cannot be read: {exc}", offset=0)
        return
    if dtype.hasobject:
        cur.report("numpy-object-array", "low", "NumPy array of Python objects: np.load(allow_pickle=True) "
                   "unpickles it", offset=start)
        scan_pickle(data, cur, start)
