"""Just enough of the ONNX protobuf wire format to recognise a model and add metadata, without the onnx package."""

from __future__ import annotations

from pathlib import Path

MAX_SNIFF_BYTES = 64 * 1024 * 1024
_GRAPH_FIELD, _METADATA_FIELD = 7, 14
# ModelProto field number -> wire type (0 varint, 2 length-delimited).
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while pos < len(buf) and shift < 64:
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("truncated varint")


def looks_like_onnx(path: Path) -> bool:
    """True when the file's top level parses as an ONNX ModelProto that holds a graph."""
    if path.stat().st_size > MAX_SNIFF_BYTES:
        with open(path, "rb") as f:
            buf = f.read(4096)
        return buf[:1] == b"\x08" and _walk(buf, partial=True)
    return _walk(path.read_bytes(), partial=False)


def _walk(buf: bytes, partial: bool) -> bool:
    pos, seen_graph = 0, False
    try:
        while pos < len(buf):
            key, pos = _varint(buf, pos)
            field, wire = key >> 3, key & 7
            if _MODEL_FIELDS.get(field) != wire:
                return False
            if wire == 0:
                _, pos = _varint(buf, pos)
            else:
                length, pos = _varint(buf, pos)
                if pos + length > len(buf) and not partial:
                    return False
                pos += length
            seen_graph |= field == _GRAPH_FIELD
    except ValueError:
        return partial
    return seen_graph or partial


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _encode_varint(field << 3 | 2) + _encode_varint(len(payload)) + payload


def append_metadata(path: Path, key: str, value: str) -> None:
    """Append one `metadata_props` entry (repeated fields may be appended to a serialised message)."""
    entry = _length_delimited(1, key.encode()) + _length_delimited(2, value.encode())
    with open(path, "ab") as f:
        f.write(_length_delimited(_METADATA_FIELD, entry))
