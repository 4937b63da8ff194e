"""Bounds on everything the scanner reads: past any of them it stops and reports, it never hangs.

One work budget (time, opcodes, nested payloads, findings) covers a whole file, however its payloads nest."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Hard limits for one scan; each exceeded limit becomes a finding (fail closed), never a silent skip."""

    max_file_bytes: int = 64 << 30  # larger files are reported, not read
    max_read_bytes: int = 16 << 20  # files up to this size are read into memory; larger ones are memory-mapped
    # in a forked child (lazy reads, ~50 ms to start), so a file truncated under the scan (SIGBUS) loses only
    # its own result
    max_member_bytes: int = 1 << 30  # one decompressed stream or archive member held in memory
    max_total_inflated: int = 8 << 30  # all decompressed bytes of one file together
    max_members: int = 200_000  # entries in one archive
    max_depth: int = 6  # nesting of archives, compressed streams and nested pickles
    max_opcodes: int = 50_000_000  # pickle opcodes of one file, nested payloads included
    max_nested: int = 2_000  # nested payloads (pickle.loads, torch.load bytes, ...) of one file
    max_findings: int = 5_000  # distinct findings of one file
    max_ratio: int = 1_000  # decompressed / compressed size, checked once `ratio_floor` bytes are out
    ratio_floor: int = 16 << 20
    max_stack: int = 2_000_000  # items on the pickle stack plus marks
    max_memo: int = 2_000_000  # memo entries of one pickle
    max_line: int = 1 << 30  # one text argument of a protocol-0 opcode (CPython has no limit)
    max_header_bytes: int = 100 << 20  # safetensors / NumPy headers, JSON configs
    max_json_candidates: int = 64  # Keras config candidates looked at in one HDF5 file
    max_proto_depth: int = 64  # nesting of ONNX sub-graphs
    max_files: int = 1_000_000  # files in one folder walk
    max_seconds: float = 600.0  # wall time for one file, nested payloads included


DEFAULT_LIMITS = Limits()
