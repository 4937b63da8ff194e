"""ONNX checks from the protobuf wire format (no onnx import): external-data paths and custom operator domains.

Field numbers follow onnx/onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto,
FunctionProto, TrainingInfoProto); sub-graphs inside attributes are followed to a bounded depth.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from bastion.supplychain.verdicts import Cursor

STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training", "ai.onnx.preview"}
RUNTIME_DOMAINS = {"com.microsoft", "com.microsoft.nchwc", "com.microsoft.mlfeaturizers", "com.ms.internal.nhwc",
                   "com.microsoft.experimental", "com.microsoft.dml", "org.pytorch.aten"}
_MODEL_FIELDS = {1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25, 26}


class ProtoError(Exception):
    """Not a valid protobuf message."""


def _varint(data: Any, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ProtoError("bad varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def fields(data: Any, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) where value is an int or a (start, end) span."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoError("field number 0")
        if wire == 0:
            value, pos = _varint(data, pos, end)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            n, pos = _varint(data, pos, end)
            value, pos = (pos, pos + n), pos + n
        else:
            raise ProtoError(f"unsupported wire type {wire}")
        if pos > end:
            raise ProtoError("field runs past its message")
        yield number, wire, value


def _text(data: Any, span: tuple[int, int]) -> str:
    return bytes(data[span[0]:min(span[1], span[0] + 4096)]).decode("utf-8", "replace")


def looks_like_onnx(data: Any, truncated: bool = False) -> bool:
    """ir_version first (field 1, varint), only ModelProto field numbers, and a graph. `truncated`: `data` is the
    head of a larger file, so a field may run past its end (the graph usually does): the fields read so far decide."""
    if len(data) < 4 or data[0] != 0x08:
        return False
    seen = set()
    try:
        for number, wire, _ in fields(data, 0, len(data)):
            if number not in _MODEL_FIELDS:
                return False
            seen.add((number, wire))
    except ProtoError:
        return truncated and (1, 0) in seen
    return (7, 2) in seen and (1, 0) in seen


def check_onnx(data: Any, cur: Cursor, folder: str | None) -> None:
    """Report external data that leaves the model's folder and nodes from custom operator domains."""
    state = {"local": set(), "domains": {}, "external": [], "nodes": 0}
    try:
        for number, wire, value in fields(data, 0, len(data)):
            if number == 25 and wire == 2:  # FunctionProto: its domain names model-local functions
                for n, w, v in fields(data, *value):
                    if n == 10 and w == 2:
                        state["local"].add(_text(data, v))
                    elif n == 7 and w == 2:
                        _node(data, v, state, cur, 1)
        for number, wire, value in fields(data, 0, len(data)):
            if number == 7 and wire == 2:
                _graph(data, value, state, cur, 1)
            elif number == 20 and wire == 2:  # TrainingInfoProto: initialization and algorithm graphs
                for n, w, v in fields(data, *value):
                    if n in (1, 2) and w == 2:
                        _graph(data, v, state, cur, 1)
    except ProtoError as exc:
        cur.report("malformed", "high", f"ONNX protobuf cannot be parsed: {exc}")
        return
    for domain, op in state["domains"].items():
        if domain in state["local"] or domain in STANDARD_DOMAINS:
            continue
        if domain in RUNTIME_DOMAINS:
            cur.report("onnx-custom-op", "info", f"operator {op} from onnxruntime's built-in domain {domain!r}",
                       subject=f"domain:{domain}")
        else:
            cur.report("onnx-custom-op", "medium", f"operator {op} from custom domain {domain!r} needs a native "
                       "operator library to load", subject=f"domain:{domain}")
    for location in state["external"]:
        _judge_location(location, cur, folder)


def _graph(data: Any, span: tuple[int, int], state: dict, cur: Cursor, depth: int) -> None:
    if depth > cur.limits.max_proto_depth:
        raise ProtoError("sub-graphs nest too deeply")
    for n, w, v in fields(data, *span):
        if w != 2:
            continue
        if n == 1:
            _node(data, v, state, cur, depth)
        elif n == 5:
            _tensor(data, v, state)
        elif n == 15:  # SparseTensorProto: values (1) and indices (2) are TensorProtos
            for n2, w2, v2 in fields(data, *v):
                if n2 in (1, 2) and w2 == 2:
                    _tensor(data, v2, state)


def _node(data: Any, span: tuple[int, int], state: dict, cur: Cursor, depth: int) -> None:
    state["nodes"] += 1
    if state["nodes"] > cur.limits.max_members:
        raise ProtoError("too many nodes")
    domain, op = "", "?"
    for n, w, v in fields(data, *span):
        if n == 7 and w == 2:
            domain = _text(data, v)
        elif n == 4 and w == 2:
            op = _text(data, v)
        elif n == 5 and w == 2:
            _attribute(data, v, state, cur, depth)
    state["domains"].setdefault(domain, op)


def _attribute(data: Any, span: tuple[int, int], state: dict, cur: Cursor, depth: int) -> None:
    for n, w, v in fields(data, *span):
        if w != 2:
            continue
        if n in (6, 11):
            _graph(data, v, state, cur, depth + 1)
        elif n in (5, 10):
            _tensor(data, v, state)
        elif n in (22, 23):
            for n2, w2, v2 in fields(data, *v):
                if n2 in (1, 2) and w2 == 2:
                    _tensor(data, v2, state)


def _tensor(data: Any, span: tuple[int, int], state: dict) -> None:
    for n, w, v in fields(data, *span):
        if n == 13 and w == 2:  # external_data: StringStringEntryProto {key = 1, value = 2}
            entry = {}
            for n2, w2, v2 in fields(data, *v):
                if w2 == 2 and n2 in (1, 2):
                    entry[n2] = _text(data, v2)
            if entry.get(1) == "location":
                state["external"].append(entry.get(2, ""))


def _judge_location(location: str, cur: Cursor, folder: str | None) -> None:
    norm = location.replace("\\", "/")
    parts = norm.split("/")
    escapes = (norm.startswith("/") or ".." in parts or "\x00" in location or ":" in location
               or location.startswith("~"))
    if not escapes and folder is not None:
        real = os.path.realpath(os.path.join(folder, location))
        escapes = os.path.commonpath([real, os.path.realpath(folder)]) != os.path.realpath(folder)
    if escapes:
        cur.report("onnx-external-data", "high", f"external data location {location!r} points outside the "
                   "model's folder (loading reads that file into the weights)", subject=f"external:{location}")
    else:
        cur.report("onnx-external-data", "info", f"tensor data is stored in external file {location!r}",
                   subject=f"external:{location}")
