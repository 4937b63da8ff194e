"""`scan_path`: scan a file or a folder tree and return a ScanReport."""

from __future__ import annotations

import faulthandler
import hashlib
import os
import signal
import stat
import time
from collections.abc import Iterable
from pathlib import Path

from bastion.core.errors import ModelLoadError
from bastion.supplychain.detect import FileChanged, read_buffer
from bastion.supplychain.limits import DEFAULT_LIMITS, Limits
from bastion.supplychain.scan_report import ScannedFile, ScanReport
from bastion.supplychain.scanner import scan_buffer
from bastion.supplychain.verdicts import Cursor, Sink


def scan_bytes(data: bytes, name: str = "<bytes>", limits: Limits = DEFAULT_LIMITS) -> ScanReport:
    """Scan an in-memory buffer as if it were a file called `name`."""
    started = time.monotonic()
    sink = Sink(name, limits, started)
    fmt = _guarded_scan(data, Cursor(sink))
    seconds = time.monotonic() - started
    scanned = ScannedFile(name, fmt, hashlib.sha256(data).hexdigest(), len(data), seconds, sorted(sink.globals))
    return ScanReport([scanned], list(sink.findings.values()), [], seconds)


def _guarded_scan(data: object, cur: Cursor) -> str:
    """Run the scanner; anything unexpected becomes a finding (fail closed), never a crash."""
    try:
        return scan_buffer(data, cur)
    except RecursionError:
        cur.report("limit", "high", "structure nests too deeply for the scanner")
    except MemoryError:
        cur.report("limit", "high", "the scanner ran out of memory on this file")
    except Exception as exc:  # noqa: BLE001 - a scanner bug must fail closed, not crash the caller
        cur.report("scanner-error", "high", f"unexpected scanner error {type(exc).__name__}: {exc}")
    return "unknown"


def scan_file(path: str | Path, limits: Limits = DEFAULT_LIMITS, digest: bool = True) -> ScanReport:
    """Scan one regular file; `digest` adds its sha256.

    Files up to `limits.max_read_bytes` are read into memory and checked for changes while they were read;
    larger ones are memory-mapped in a child process, so a file truncated under the scan (SIGBUS) turns into an
    error for that file instead of killing the caller."""
    p = Path(path)
    started = time.monotonic()
    try:
        info = os.stat(p)
    except OSError as exc:
        return ScanReport(errors=[f"{p}: {exc.strerror or exc}"])
    if not stat.S_ISREG(info.st_mode):
        return ScanReport(errors=[f"{p}: not a regular file"])
    if info.st_size > limits.max_file_bytes:
        sink = Sink(str(p), limits, started)
        Cursor(sink).report("limit", "high", f"file of {info.st_size} bytes is larger than the scanner limit")
        return ScanReport([ScannedFile(str(p), "unknown", "", info.st_size)], list(sink.findings.values()))
    if info.st_size > limits.max_read_bytes and hasattr(os, "fork"):
        return _in_child(p, limits, digest)
    return _scan_opened(p, limits, digest, started)


def _scan_opened(p: Path, limits: Limits, digest: bool, started: float) -> ScanReport:
    try:
        data, closer = read_buffer(p, limits.max_read_bytes)
    except FileChanged as exc:
        return ScanReport(errors=[f"{p}: {exc}"])
    except OSError as exc:
        return ScanReport(errors=[f"{p}: {exc.strerror or exc}"])
    sink = Sink(str(p), limits, started, folder=str(p.parent))
    size = len(data)
    try:
        sha = hashlib.sha256(data).hexdigest() if digest else ""
        fmt = _guarded_scan(data, Cursor(sink))
    finally:
        if closer is not None:
            closer.close()
    seconds = time.monotonic() - started
    scanned = ScannedFile(str(p), fmt, sha, size, round(seconds, 6), sorted(sink.globals))
    return ScanReport([scanned], list(sink.findings.values()), [], seconds)


def _in_child(p: Path, limits: Limits, digest: bool) -> ScanReport:
    """Scan a memory-mapped file in a forked child; the report comes back as JSON over a pipe."""
    started = time.monotonic()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: scan, write the report, exit without running the parent's cleanup handlers
        status = 1
        try:
            faulthandler.disable()  # a SIGBUS here is an expected answer, reported by the parent
            os.close(read_end)
            payload = _scan_opened(p, limits, digest, started).to_json().encode()
            with os.fdopen(write_end, "wb") as out:
                out.write(payload)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        raw = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        why = "the file shrank while it was scanned (SIGBUS)" if sig == signal.SIGBUS else \
            f"the scan was stopped by signal {sig}"
        return ScanReport(errors=[f"{p}: {why}; scan it again once it is complete"])
    if os.WEXITSTATUS(status) != 0 or not raw:
        return ScanReport(errors=[f"{p}: the scan of this file failed"])
    return ScanReport.from_json(raw.decode())


def _walk(folder: Path, limits: Limits) -> Iterable[Path]:
    count = 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            count += 1
            if count > limits.max_files:
                return
            yield Path(root) / name


def scan_path(path: str | Path, limits: Limits | None = None, digest: bool = True) -> ScanReport:
    """Scan a file, or every file under a folder (symbolic links to folders are not followed).

    `digest=False` skips the sha256 of each file (the one step that reads every byte)."""
    limits = limits or DEFAULT_LIMITS
    p = Path(path)
    try:
        is_dir = stat.S_ISDIR(os.stat(p).st_mode)
    except FileNotFoundError:
        raise ModelLoadError(f"no such file or folder: {p}") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {p}: {exc.strerror or exc}") from None
    if not is_dir:
        return scan_file(p, limits, digest)
    started = time.monotonic()
    report = ScanReport()
    for file in _walk(p, limits):
        report.merge(scan_file(file, limits, digest))
    report.seconds = time.monotonic() - started
    return report


def scan_paths(paths: Iterable[str | Path], limits: Limits | None = None) -> ScanReport:
    """Scan several files or folders into one report."""
    report = ScanReport()
    for p in paths:
        report.merge(scan_path(p, limits))
    return report
