"""Just enough of the ONNX protobuf wire format to add metadata to a model, without the onnx package (the format
itself is recognised by `bastion.supplychain.detect`)."""

from __future__ import annotations

from pathlib import Path

_METADATA_FIELD = 14


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
