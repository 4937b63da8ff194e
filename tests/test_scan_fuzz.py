"""Property-based fuzzing: hostile bytes never crash, hang or escape the scanner (every failure is a finding), and
a mutated malicious file that CPython's unpickler still runs up to a callable is never called clean.

Hangs are bounded by the scanner's own work budget (LIMITS.max_seconds), not by timing assertions."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.supplychain import Limits, scan_bytes
from bastion.supplychain.import_policy import judge
from bastion.supplychain.pickle_vm import OPCODE_BYTES

from .scan_corpus import benign_cases, bypass_cases, cpython_reads, malicious_cases, mutate

MALICIOUS = [c.data for c in malicious_cases() + bypass_cases() if len(c.data) < 200_000]
SEEDS = MALICIOUS + [c.data for c in benign_cases() if len(c.data) < 200_000]
LIMITS = Limits(max_seconds=5.0, max_member_bytes=8 << 20)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)


def _check(data: bytes) -> None:
    report = scan_bytes(data, "fuzz", limits=LIMITS)
    bugs = [f.title for f in report.findings if f.metric == "scanner-error"]
    assert bugs == [], bugs
    report.to_json()  # always serialisable
    reached, _ = cpython_reads(data)
    unsafe = {f"{m}.{n}" for m, n in reached if judge(m, n, 2).severity is not None
              and all(part.isidentifier() for part in m.split("."))}
    assert not unsafe or not report.is_clean(min_severity="high"), f"pickle.load reaches {unsafe}, scan is clean"


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(sorted(OPCODE_BYTES)), st.binary(max_size=6)), max_size=60))
def test_random_opcode_streams(ops: list[tuple[int, bytes]]) -> None:
    _check(b"\x80\x04" + b"".join(bytes([op]) + arg for op, arg in ops) + b".")


@FUZZ
@given(st.sampled_from(range(len(SEEDS))),
       st.lists(st.tuples(st.one_of(st.integers(0, 64), st.integers(-400, -1), st.integers(0, 1 << 20)),
                          st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, 1 << 20))
def test_mutated_model_files(index: int, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(SEEDS[index])
    for pos, value in flips:
        data[pos % len(data)] = value
    _check(bytes(data[: max(1, len(data) - cut % 64)]))


@settings(FUZZ, max_examples=400)
@given(st.sampled_from(range(len(MALICIOUS))),
       st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete"]), st.integers(0, 1 << 20),
                          st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_malicious_files_never_scan_clean_while_they_still_run(index: int, edits: list) -> None:
    _check(mutate(MALICIOUS[index], edits))
