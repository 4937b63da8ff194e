"""One format sniffer: the model loader and the scanner name every file alike, from a bounded read, no mmap."""

from __future__ import annotations

import json
import mmap
import pickle
import struct
import zipfile

import pytest
import torch
from torch import nn

from bastion.models.loader import LOADABLE, sniff_format
from bastion.supplychain import detect
from bastion.supplychain.detect import PICKLE_FORMATS, SNIFF_BYTES, detect_bytes, detect_format

BIG = SNIFF_BYTES * 3


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def onnx_bytes(graph_payload: int) -> bytes:
    """ir_version 8 (field 1, varint) and a graph (field 7) whose payload is an opaque name of that many bytes."""
    graph = b"\x12" + _varint(graph_payload) + b"g" * graph_payload  # GraphProto.name
    return b"\x08\x08" + b"\x3a" + _varint(len(graph)) + graph


def safetensors_bytes(n_floats: int) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * (4 * n_floats)


def zip_bytes(tmp_path, members: dict[str, bytes]) -> bytes:
    path = tmp_path / "archive.zip"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path.read_bytes()


def torchscript_bytes(tmp_path) -> bytes:
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(path))
    return path.read_bytes()


def cases(tmp_path) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, loader format expected)."""
    return {
        "torchscript": (torchscript_bytes(tmp_path), "torchscript"),
        "pickle": (pickle.dumps({"w": [1.0, 2.0]}, protocol=4), "pickle"),
        "big_pickle": (pickle.dumps({"w": b"x" * BIG}, protocol=4), "pickle"),
        "protocol0_pickle": (b"(dp0\nS'w'\np1\nI1\ns.", "pickle"),
        "safetensors": (safetensors_bytes(4), "safetensors"),
        "big_safetensors": (safetensors_bytes(BIG // 4), "safetensors"),
        "onnx": (onnx_bytes(16), "onnx"),
        "big_onnx": (onnx_bytes(BIG), "onnx"),
        "pytorch_zip": (zip_bytes(tmp_path, {"m/data.pkl": pickle.dumps(1), "m/data/0": b"\0" * BIG}),
                        "pytorch-zip"),
        "skops": (zip_bytes(tmp_path, {"schema.json": b"{}"}), "skops"),
        "torch_export": (zip_bytes(tmp_path, {"m/archive_format": b"pt2", "m/models/model.json": b"{}"}),
                         "torch-export"),
        "text": (b"just some text\n" * 10, "unknown"),
    }


def loader_view(scanner_format: str) -> str:
    if scanner_format in LOADABLE:
        return scanner_format
    return "pickle" if scanner_format in PICKLE_FORMATS else "unknown"


@pytest.fixture()
def files(tmp_path):
    out = {}
    for name, (data, expected) in cases(tmp_path).items():
        path = tmp_path / f"{name}.bin"  # names never decide: every file has the same suffix
        path.write_bytes(data)
        out[name] = (path, expected)
    return out


def test_loader_and_scanner_name_every_file_alike(files):
    for name, (path, expected) in files.items():
        whole = detect_bytes(path.read_bytes())  # what the scanner sees, holding the whole file
        assert detect_format(path) == whole, name
        assert sniff_format(path) == loader_view(whole) == expected, name


def test_large_files_are_sniffed_from_a_bounded_read_without_mmap(files, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("the sniffer must not memory-map the file")

    monkeypatch.setattr(detect.mmap, "mmap", refuse)
    monkeypatch.setattr(mmap, "mmap", refuse)
    reads: list[int] = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def fileno(self):
            return self.f.fileno()

        def read(self, n=-1):
            data = self.f.read(n)
            reads.append(len(data))
            return data

    monkeypatch.setattr(detect, "open", lambda p, mode="r": Counting(real_open(p, mode)), raising=False)
    for name in ("big_pickle", "big_safetensors", "big_onnx"):
        path, expected = files[name]
        assert path.stat().st_size > SNIFF_BYTES
        assert sniff_format(path) == expected
    assert reads and max(reads) <= SNIFF_BYTES
