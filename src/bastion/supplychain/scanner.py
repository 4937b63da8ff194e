"""Dispatch: detect a buffer's format, run the matching checks, recurse into members, and look at the other
ways the same bytes can be read (polyglots)."""

from __future__ import annotations

import contextlib
import re
from typing import Any

from bastion.supplychain.archives import ArchiveError, find_eocd, member_head, read_member, read_tar, read_zip
from bastion.supplychain.code_formats import check_code_archive
from bastion.supplychain.compression import InflateError, compression_of, inflate
from bastion.supplychain.config_checks import HDF5_MAGIC, check_h5, check_keras_json, check_skops_schema
from bastion.supplychain.detect import (
    COMPRESSED,
    PICKLE_FORMATS,
    UNOPENABLE,
    ZIP_FORMATS,
    classify_zip,
    detect_bytes,
    looks_like_pickle,
)
from bastion.supplychain.onnx_check import check_onnx
from bastion.supplychain.pickle_values import BudgetSpent, PickleError
from bastion.supplychain.pickle_vm import OPCODE_BYTES, PickleVM
from bastion.supplychain.template_checks import check_gguf, check_json_template
from bastion.supplychain.tensor_checks import check_npy, check_safetensors, npy_dtype
from bastion.supplychain.torch_formats import scan_legacy, walk_storages, walk_tensors
from bastion.supplychain.verdicts import Cursor, Sink

_STORAGE = re.compile(r"(^|/)data/(\d+|weights/[^/]+)$")
_TORCH_KINDS = {"pytorch-zip", "torchscript", "torch-export"}
_NESTED_HEADS = (b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY", HDF5_MAGIC)


def scan_buffer(data: Any, cur: Cursor, fmt: str | None = None) -> str:
    """Scan one buffer (a file, a member, a decompressed stream); return its detected format."""
    if cur.depth > cur.limits.max_depth:
        cur.report("limit", "high", f"nesting deeper than {cur.limits.max_depth} levels was not scanned")
        return fmt or "unknown"
    fmt = fmt or detect_bytes(data)
    handler = _HANDLERS.get(fmt)
    if handler is not None:
        handler(data, cur, fmt)
    _other_views(data, cur, fmt)
    return fmt


def run_stream(data: Any, cur: Cursor, start: int, *, mode: str = "pickle", context: str = "pickle") -> tuple:
    """Run one pickle from `start`: (end offset, symbolic result). Raises PickleError."""
    vm = PickleVM(data, cur, start, mode=mode, context=context, scan_nested=scan_buffer)
    end = vm.run()
    if mode == "joblib" and vm.arrays:
        _joblib_as_pickle(data, cur, start)
    return end, vm.result


def scan_streams(data: Any, cur: Cursor, start: int = 0, *, mode: str = "pickle", context: str = "pickle") -> None:
    """Scan consecutive pickles (a loader may call pickle.load repeatedly); a broken first pickle fails closed."""
    pos, first = start, True
    while pos < len(data):
        try:
            pos, _ = run_stream(data, cur, pos, mode=mode, context=context)
        except BudgetSpent as exc:
            cur.report("limit", "high", f"pickle not followed to its end: {exc}", offset=pos)
            return
        except PickleError as exc:
            if first:
                cur.report("malformed", "high", f"pickle cannot be followed: {exc}", offset=pos)
            else:
                cur.report("trailing-data", "info", f"bytes after the pickle are not another pickle ({exc})",
                           offset=pos)
            return
        first = False
        if pos < len(data) and data[pos] not in OPCODE_BYTES:
            if bytes(data[pos:pos + 4096]).strip(b"\x00\n\r\t "):
                cur.report("trailing-data", "info", f"{len(data) - pos} bytes follow the pickle", offset=pos)
            return


def _joblib_as_pickle(data: Any, cur: Cursor, start: int) -> None:
    """pickle.load (not joblib.load) reads joblib's raw array bytes as opcodes: scan that reading too."""
    probe = Cursor(Sink(cur.sink.file, cur.limits), cur.member, cur.depth)
    with contextlib.suppress(PickleError):
        PickleVM(data, probe, start).run()
    for (member, rule, subject), f in probe.sink.findings.items():
        if f.severity == "critical":
            key = (member, rule, f"{subject} (pickle.load view)")
            f.title = "read with pickle.load instead of joblib.load, array bytes become opcodes: " + f.title
            cur.sink.findings.setdefault(key, f)


def _joblib(data: Any, cur: Cursor, fmt: str) -> None:
    kind = compression_of(bytes(data[:16]))
    if kind is None:
        scan_streams(data, cur, mode="joblib")
        return
    raw = _inflate(data, cur, kind)
    if raw is not None:
        scan_streams(raw, cur.enter(f"<{kind}>"), mode="joblib")


def _inflate(data: Any, cur: Cursor, kind: str) -> bytes | None:
    try:
        raw = inflate(data, kind, cur.limits.max_member_bytes, max_ratio=cur.limits.max_ratio,
                      ratio_floor=cur.limits.ratio_floor)
    except InflateError as exc:
        rule = "limit" if "more than" in str(exc) else "malformed"
        cur.report(rule, "high", f"{kind} stream cannot be scanned: {exc}")
        return None
    cur.sink.inflated += len(raw)
    if cur.sink.inflated > cur.limits.max_total_inflated:
        cur.report("limit", "high", "total decompressed size passes the scanner limit")
        return None
    return raw


def _compressed(data: Any, cur: Cursor, fmt: str) -> None:
    if fmt == "lz4":
        _unverifiable(data, cur, fmt)
        return
    raw = _inflate(data, cur, fmt)
    if raw is not None:
        scan_buffer(raw, cur.enter(f"<{fmt}>"))


def _unverifiable(data: Any, cur: Cursor, fmt: str) -> None:
    cur.report("unverifiable", "high", f"{fmt} archive or stream: the scanner cannot open it, so its contents "
               "were not checked", subject=f"unverifiable:{fmt}")


def _legacy(data: Any, cur: Cursor, fmt: str) -> None:
    scan_legacy(data, cur, run_stream)


def _zip(data: Any, cur: Cursor, fmt: str) -> None:
    try:
        directory = read_zip(data, cur)
    except (ArchiveError, ValueError, IndexError, OverflowError) as exc:
        cur.report("malformed", "high", f"ZIP archive cannot be read: {exc}")
        return
    if directory.prefix:
        _prefix(data, directory.prefix, cur)
    context = "torchscript" if fmt == "torchscript" else "pickle"
    read = check_code_archive(fmt, data, directory, cur, scan_buffer, scan_streams)  # .pt2 and TorchScript
    for m in directory.members:
        if m.data < 0 or m.name.endswith("/") or m.name in read or (
                fmt in _TORCH_KINDS and _STORAGE.search(m.name.lower())):
            continue
        if cur.sink.out_of_time():
            cur.report("limit", "high", "scan time limit reached before every member was checked")
            return
        base = m.name.rsplit("/", 1)[-1].lower()  # PyTorch finds DATA.PKL as data.pkl
        child = cur.enter(m.name)
        try:
            if base.endswith((".pkl", ".debug_pkl")):
                scan_streams(read_member(data, m, cur), child, context=context)
            elif fmt == "keras" and base == "config.json":
                check_keras_json(read_member(data, m, cur), child)
            elif fmt == "skops" and base == "schema.json":
                check_skops_schema(read_member(data, m, cur), child)
            elif _numeric_npy(head := member_head(data, m, cur, 4096), cur):
                continue  # np.load reads plain numbers from it: no need to inflate the array data
            elif _worth_reading(head) or base.endswith(".json"):
                scan_buffer(read_member(data, m, cur), child)
        except ArchiveError as exc:
            rule = "limit" if "more than" in str(exc) else "malformed"
            child.report(rule, "high", f"archive member cannot be read: {exc}")


def _numeric_npy(head: bytes, cur: Cursor) -> bool:
    """True when the first bytes hold a complete .npy header whose dtype has no Python objects."""
    if not head.startswith(b"\x93NUMPY"):
        return False
    try:
        dtype, _ = npy_dtype(head, cur.limits.max_header_bytes)
        return not dtype.hasobject
    except (ValueError, TypeError):
        return False


def _worth_reading(head: bytes) -> bool:
    """Members whose first bytes show a format that can carry code, or that the scanner cannot open (others are
    raw data). A protocol-0 pickle without a PROTO opcode shows itself by importing a name in its first bytes."""
    if not head:
        return False
    if head.startswith(_NESTED_HEADS) or compression_of(head) is not None or head.lstrip()[:1] == b"{":
        return True
    if any(head.startswith(magic) for magic in UNOPENABLE):
        return True
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return True
    return looks_like_pickle(head)


def _prefix(data: Any, size: int, cur: Cursor) -> None:
    prefix = bytes(data[:size])
    if not prefix.strip(b"\x00"):
        return
    fmt = detect_bytes(prefix)
    severity = "high" if fmt in PICKLE_FORMATS else "medium"
    cur.report("polyglot", severity, f"{size} bytes before the ZIP archive form a {fmt} file: torch.load and "
               "zipfile read different contents", offset=0)
    if fmt != "unknown":
        scan_buffer(prefix, cur.enter("<bytes before the archive>"), fmt)


def _tar(data: Any, cur: Cursor, fmt: str) -> None:
    try:
        members = read_tar(data, cur)
    except ArchiveError as exc:
        cur.report("malformed", "high", f"tar archive cannot be read: {exc}")
        return
    for m in members:
        child = cur.enter(m.name)
        if m.kind == "link":
            child.report("archive-anomaly", "medium", "tar link member: extraction can write outside the folder")
            continue
        if m.kind != "file" or m.size > cur.limits.max_member_bytes:
            if m.size > cur.limits.max_member_bytes:
                child.report("limit", "high", "tar member larger than the scanner limit was not checked")
            continue
        body = bytes(data[m.offset:m.offset + m.size])
        if fmt == "pytorch-tar" and m.name in ("storages", "tensors"):
            (walk_storages if m.name == "storages" else walk_tensors)(body, child, run_stream)
        elif fmt == "pytorch-tar" and m.name in ("pickle", "sys_info"):
            scan_streams(body, child)
        elif _worth_reading(body[:4096]) or m.name.endswith((".pkl", ".pt", ".pth", ".bin", ".joblib")):
            scan_buffer(body, child)


def _other_views(data: Any, cur: Cursor, fmt: str) -> None:
    """Polyglots: bytes that are also a ZIP archive, or also a complete pickle, are scanned that way too."""
    if len(data) < 8 or fmt in ("unknown", "empty"):
        return
    if fmt not in ZIP_FORMATS and find_eocd(data) >= 0:
        probe = Cursor(Sink(cur.sink.file, cur.limits), cur.member, cur.depth)
        try:
            directory = read_zip(data, probe, check=False)
        except (ArchiveError, ValueError, IndexError, OverflowError):
            directory = None
        if directory is not None and directory.members:
            kind = classify_zip([m.name for m in directory.members])
            cur.report("polyglot", "medium", f"the {fmt} file is also a ZIP archive ({kind})")
            _zip(data, cur.enter("<zip view>"), kind)
    if fmt not in PICKLE_FORMATS and data[0] in OPCODE_BYTES and fmt not in COMPRESSED:
        probe = Cursor(Sink(cur.sink.file, cur.limits), cur.enter("<pickle view>").member, cur.depth + 1)
        vm = PickleVM(data, probe, 0, scan_nested=scan_buffer)
        try:
            vm.run()
            what = "a complete pickle"
        except PickleError:
            if not vm.imports:
                return
            what = "a pickle (broken later, but pickle.load imports and calls what precedes the break)"
        cur.report("polyglot", "high", f"the {fmt} file is also {what}: pickle-based loaders run it")
        for key, f in probe.sink.findings.items():
            cur.sink.findings.setdefault(key, f)


def _numpy(data: Any, cur: Cursor, fmt: str) -> None:
    check_npy(data, cur, lambda d, c, start: scan_streams(d, c, start))


def _onnx(data: Any, cur: Cursor, fmt: str) -> None:
    check_onnx(data, cur, cur.sink.folder if cur.member is None else None)


_HANDLERS = {
    "pickle": lambda d, c, f: scan_streams(d, c),
    "joblib": _joblib,
    "pytorch-legacy": _legacy,
    "pytorch-tar": _tar,
    "tar": _tar,
    "numpy": _numpy,
    "safetensors": lambda d, c, f: check_safetensors(d, c),
    "onnx": _onnx,
    "h5": lambda d, c, f: check_h5(d, c),
    "keras-config": lambda d, c, f: check_json_template(d, c),
    "gguf": lambda d, c, f: check_gguf(d, c),
    "tokenizer-config": lambda d, c, f: check_json_template(d, c),
    **{k: _zip for k in ZIP_FORMATS},
    **{k: _compressed for k in COMPRESSED},
    **{k: _unverifiable for k in UNOPENABLE.values()},
}
