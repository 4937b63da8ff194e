"""Format detection from bytes, never from file names: the one sniffer of the scanner and the model loader.

`detect_bytes` names the format of a buffer the scanner already holds; `detect_format` names a file's format
from a bounded plain read (its first `SNIFF_BYTES`, and a ZIP's central directory), never a memory map, so the
loader can ask before anything of the file is trusted.
"""

from __future__ import annotations

import mmap
import os
import zipfile
from pathlib import Path
from typing import Any

from bastion.core.errors import ModelLoadError
from bastion.supplychain.archives import ArchiveError, find_eocd, is_tar, read_tar, read_zip
from bastion.supplychain.compression import compression_of, head_of
from bastion.supplychain.config_checks import chat_templates, is_h5, is_keras_config, parse_json_config
from bastion.supplychain.limits import DEFAULT_LIMITS
from bastion.supplychain.onnx_check import looks_like_onnx
from bastion.supplychain.pickle_values import PickleError, PickleTruncated
from bastion.supplychain.pickle_vm import OPCODE_BYTES, PickleVM
from bastion.supplychain.template_checks import is_gguf
from bastion.supplychain.tensor_checks import looks_like_safetensors
from bastion.supplychain.verdicts import Cursor, Sink

TORCH_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
PICKLE_FORMATS = frozenset({"pickle", "joblib", "pytorch-zip", "pytorch-legacy", "pytorch-tar"})
# Formats whose loading runs code of the model's author (the sandbox runs them; bastion.sandbox.policy).
CODE_FORMATS = ("torchscript", "torch-export", "onnx", "skops", "pytorch-zip", "pickle", "safetensors")
ZIP_FORMATS = frozenset({"pytorch-zip", "torchscript", "torch-export", "keras", "skops", "npz", "zip"})
COMPRESSED = frozenset({"gzip", "bz2", "xz", "lzma", "zlib", "lz4", "zfile"})
# containers the scanner cannot open: flagged as unverifiable, never passed
UNOPENABLE = {b"7z\xbc\xaf\x27\x1c": "7z", b"Rar!\x1a\x07": "rar", b"\x28\xb5\x2f\xfd": "zstd", b"MSCF\0\0\0\0": "cab",
              b"xar!": "xar", b"LZIP": "lzip", b"\x89LZO\x00\r\n\x1a\n": "lzo", b"!<arch>\n": "ar",
              b"070701": "cpio", b"070702": "cpio", b"070707": "cpio", b"\xed\xab\xee\xdb": "rpm"}
_PROBE = 1 << 16


def scratch(limits: Any = None) -> Cursor:
    """A cursor whose findings are thrown away (for probing a view of the bytes)."""
    return Cursor(Sink("<probe>", limits) if limits is not None else Sink("<probe>"))


def looks_like_pickle(data: Any, start: int = 0) -> bool:
    """True when the bytes at `start` run as a pickle to STOP (or for the whole probe window)."""
    if start >= len(data) or data[start] not in OPCODE_BYTES:
        return False
    if data[start] == 0x80 and start + 1 < len(data) and data[start + 1] <= 5:
        return True
    window = _PROBE
    while True:
        end = min(len(data), start + window)
        vm = PickleVM(data, scratch(), start, end)
        try:
            vm.run()
            return True
        except PickleTruncated:
            if end < len(data) and vm.opcodes < 8 and vm.at == start:
                window *= 16  # one long protocol-0 text argument (CPython reads lines of any length)
                continue
            return (end < len(data) and vm.opcodes >= 8) or vm.imports > 0
        except PickleError:
            return vm.imports > 0  # a broken pickle still imports (and calls) what comes before the break
        except (RecursionError, MemoryError, ValueError, TypeError, OverflowError):
            return False


def classify_zip(names: list[str]) -> str:
    """Name the kind of ZIP archive from its member names (PyTorch's miniz reader ignores case)."""
    names = [n.lower() for n in names]
    base = {n.rsplit("/", 1)[-1] for n in names}
    if any(n.endswith("/archive_format") or n == "archive_format" or n.endswith("models/model.json") for n in names):
        return "torch-export"
    if "constants.pkl" in base or any("/code/__torch__" in n or n.startswith("code/__torch__") for n in names):
        return "torchscript"
    if "data.pkl" in base:
        return "pytorch-zip"
    if "schema.json" in base:
        return "skops"
    if "config.json" in base and base & {"model.weights.h5", "metadata.json", "model.weights.npz"}:
        return "keras"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    return "zip"


def _zip_kind(data: Any) -> str | None:
    try:
        directory = read_zip(data, scratch(), check=False)
    except (ArchiveError, ValueError, IndexError, OverflowError):
        return None
    return classify_zip([m.name for m in directory.members])


def detect_bytes(data: Any) -> str:
    """The format of a buffer: see PICKLE_FORMATS, ZIP_FORMATS, COMPRESSED and the other names below."""
    if len(data) == 0:
        return "empty"
    head = bytes(data[:64])
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _zip_kind(data) or "zip"
    if head.startswith(b"\x93NUMPY"):
        return "numpy"
    for magic, kind in UNOPENABLE.items():
        if head.startswith(magic):
            return kind
    if is_h5(data):
        return "h5"
    kind = compression_of(head)
    if kind is not None:
        if kind == "lz4":
            return kind
        inner = head_of(data, kind, 4096)
        if inner:
            if inner[:1] == b"\x80" or looks_like_pickle(inner):
                return "joblib"
            return kind
    if is_tar(data):
        return _tar_kind(data)
    if looks_like_safetensors(data):
        return "safetensors"
    if head.startswith(b"\x80") and len(head) > 1 and head[1] <= 5:
        if head[2:14] == TORCH_MAGIC:
            return "pytorch-legacy"
        return "joblib" if data.find(b"joblib.numpy_pickle", 0, 1 << 20) >= 0 else "pickle"
    if is_gguf(data):
        return "gguf"
    if looks_like_onnx(data):
        return "onnx"
    if head.lstrip().startswith(b"{"):
        kind = _json_kind(data)
        if kind is not None:
            return kind
    if looks_like_pickle(data):
        return "pickle"
    if find_eocd(data) >= 0 and _zip_kind(data) is not None:
        return _zip_kind(data) or "zip"
    return "unknown"


def _json_kind(data: Any) -> str | None:
    """"keras-config" or "tokenizer-config" for a JSON file that is one (parsed whole), else None."""
    limit = DEFAULT_LIMITS.max_header_bytes
    if len(data) > limit:
        return "tokenizer-config"  # too large to judge here: its handler reports the limit
    config = parse_json_config(data, limit)
    if is_keras_config(config):
        return "keras-config"
    return "tokenizer-config" if chat_templates(config) else None


def _tar_kind(data: Any) -> str:
    try:
        names = {m.name for m in read_tar(data, scratch())}
    except ArchiveError:
        return "tar"
    return "pytorch-tar" if {"pickle", "storages", "tensors"} <= names else "tar"


class FileChanged(OSError):
    """The file changed size while it was read."""


def read_buffer(path: str | Path, max_read: int) -> tuple[Any, Any]:
    """The file's bytes: (buffer, closer). Up to `max_read` bytes are read into memory, where nothing can change
    under the scanner; larger files are memory-mapped (callers keep those away from their own process)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size > max_read:
            mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
            return mm, mm
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 24, max_read + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_read:
                break
        if total != size or os.fstat(fd).st_size != size:
            raise FileChanged(f"the file changed size while it was read ({size} -> {total} bytes)")
        return b"".join(chunks), None
    finally:
        os.close(fd)


SNIFF_BYTES = 1 << 20  # what `detect_format` reads of a file (the whole file when it is this small)


def detect_format(path: str | Path) -> str:
    """Name a file's format from its bytes (e.g. "pytorch-zip", "safetensors", "onnx", "unknown").

    Reads at most SNIFF_BYTES from the start with a plain read, plus a ZIP's central directory (through
    `zipfile`, which reads only the directory); a file that small is judged exactly as `detect_bytes` judges it.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"no such file: {p}")
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(SNIFF_BYTES)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {p}: {exc.strerror or exc}") from None
    if size <= len(head):
        return detect_bytes(head)
    return _detect_head(p, head, size)


def _detect_head(path: Path, head: bytes, size: int) -> str:
    """The format of a file larger than its `head`: the checks that need the whole file use what they can."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        try:
            with zipfile.ZipFile(path) as z:
                return classify_zip(z.namelist())
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return "zip"
    if looks_like_safetensors(head, size):
        return "safetensors"
    if looks_like_onnx(head, truncated=True):
        return "onnx"
    return detect_bytes(head)


def carries_code(model: str, arch: str | None = None) -> bool:
    """True when loading MODEL runs code of its author: every local format Bastion loads, and any --arch."""
    if "://" in str(model):
        return False
    if arch:
        return True
    if not os.path.isfile(model):
        raise ModelLoadError(f"model not found: {model}")
    fmt = detect_format(model)
    return fmt in CODE_FORMATS or fmt in PICKLE_FORMATS
