"""PyTorch's pre-zip formats, as written by `torch.save(..., _use_new_zipfile_serialization=False)` and by
torch < 0.4 (tar). Every pickle the loader reads is scanned; raw storage bytes are skipped by their exact sizes."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from bastion.supplychain.pickle_values import Global, PickleError
from bastion.supplychain.verdicts import Cursor

# (data, cursor, start) -> (end offset, symbolic result)
RunStream = Callable[[Any, Cursor, int], tuple[int, Any]]

_ELEMENT = {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1,
            "Byte": 1, "Bool": 1, "ComplexDouble": 16, "ComplexFloat": 8, "QInt8": 1, "QUInt8": 1, "QInt32": 4}


def scan_legacy(data: Any, cur: Cursor, run: RunStream) -> None:
    """Magic number, protocol version, sys_info, the object, storage keys: five pickles, then raw storages."""
    pos = 0
    for what in ("magic number", "protocol version", "system info", "object", "storage keys"):
        try:
            pos, _ = run(data, cur, pos)
        except PickleError as exc:
            cur.report("malformed", "high", f"legacy PyTorch {what} pickle cannot be followed: {exc}", offset=pos)
            return


def _element_size(storage_type: Any) -> int:
    if not isinstance(storage_type, Global) or not storage_type.name.endswith("Storage"):
        raise PickleError("storage type is not a torch storage class")
    size = _ELEMENT.get(storage_type.name[: -len("Storage")])
    if size is None:
        raise PickleError(f"unknown storage type {storage_type.full}")
    return size


def walk_storages(data: Any, cur: Cursor, run: RunStream) -> None:
    """The tar 'storages' member: a count, then (key, location, type) pickles each followed by raw bytes."""
    try:
        pos, count = run(data, cur, 0)
        if type(count) is not int or not 0 <= count <= cur.limits.max_members:
            raise PickleError("storage count is not a small integer")
        for _ in range(count):
            pos, args = run(data, cur, pos)
            if not isinstance(args, tuple) or len(args) != 3:
                raise PickleError("storage record is not a (key, location, type) tuple")
            size = _element_size(args[2])
            if pos + 8 > len(data):
                raise PickleError("storage size runs past the end")
            numel = struct.unpack_from("<q", data, pos)[0]
            if numel < 0 or pos + 8 + numel * size > len(data):
                raise PickleError("storage bytes run past the end")
            pos += 8 + numel * size
        run(data, cur, pos)  # storage views
    except PickleError as exc:
        cur.report("malformed", "high", f"legacy PyTorch storages cannot be followed: {exc}")


def walk_tensors(data: Any, cur: Cursor, run: RunStream) -> None:
    """The tar 'tensors' member: a count, then per tensor a pickle and ndim/sizes/strides/offset integers."""
    try:
        pos, count = run(data, cur, 0)
        if type(count) is not int or not 0 <= count <= cur.limits.max_members:
            raise PickleError("tensor count is not a small integer")
        for _ in range(count):
            pos, _ = run(data, cur, pos)
            if pos + 8 > len(data):
                raise PickleError("tensor header runs past the end")
            ndim = struct.unpack_from("<i", data, pos)[0]
            if not 0 <= ndim <= 64:
                raise PickleError("tensor rank out of range")
            pos += 8 + 16 * ndim + 8
            if pos > len(data):
                raise PickleError("tensor header runs past the end")
    except PickleError as exc:
        cur.report("malformed", "high", f"legacy PyTorch tensors cannot be followed: {exc}")
