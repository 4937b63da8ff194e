"""Differential tests: the pickle machine against CPython's own C unpickler (with a recording `find_class`).

Whenever CPython parses a stream, Bastion parses it too; whenever CPython reaches a callable that is not on the
allow-list, Bastion reports that callable (or reports the stream as malformed), and never calls it clean.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.supplychain import scan_bytes
from bastion.supplychain.import_policy import judge
from bastion.supplychain.pickle_values import PickleError
from bastion.supplychain.pickle_vm import PickleVM
from bastion.supplychain.verdicts import Cursor, Sink

from .scan_corpus import RecordingUnpickler, bypass_cases, cpython_reads, malicious_cases, mutate

PARITY = settings(max_examples=300, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _vm(data: bytes) -> tuple[bool, object]:
    vm = PickleVM(data, Cursor(Sink("parity")))
    try:
        vm.run()
    except PickleError:
        return False, None
    return True, vm.result


def _check_parity(data: bytes) -> None:
    reached, parsed = cpython_reads(data)
    if parsed:
        assert _vm(data)[0], f"CPython parses {data!r} but the scanner does not"
    # a module path that is not dotted identifiers (a NUL, a space) cannot be imported from an installed package
    unsafe = {f"{m}.{n}" for m, n in reached if judge(m, n, 2).severity is not None
              and all(part.isidentifier() for part in m.split("."))}
    if not unsafe:
        return
    report = scan_bytes(data, "parity")
    assert not report.is_clean(min_severity="high"), f"{data!r} reaches {unsafe} but scans clean"
    rules = {f.metric for f in report.findings}
    assert unsafe <= set(report.files[0].globals) or rules & {"malformed", "dynamic-call"}, (data, unsafe, rules)


@pytest.mark.parametrize("stream", [
    b"I01\n.", b"I00\n.", b"I017\n.", b"I1\x002\n.", b"I 5\n.", b"I0x1f\n.", b"I1_000\n.", b"I+1\n.", b"I-0\n.",
    b"I99999999999999999999999\n.", b"I0b11\n.", b"I0\x00\n.", b"I 01\n.", b"I1 \n.", b"I\x001\n.",
    b"L12\x00zz\n.", b"L1_0\n.", b"L0x10L\n.", b"F1.5\x00x\n.", b"Finf\n.", b"F.5\n.", b"Fnan\x00\n.", b"F-1e5\n.",
    b"Finfinity\n.", b"I1\np01\n0g1\n.", b"I1\np1\x00\n0g001\n.", b"S'a\\x41'\n.", b"Vcaf\\u00e9\n.",
])
def test_protocol0_quirks_read_as_cpython_reads_them(stream: bytes) -> None:
    ok, value = _vm(stream)
    assert ok and repr(value) == repr(RecordingUnpickler(stream).load())


@pytest.mark.parametrize("stream", [b"I08\n.", b"I\n.", b"F 1.5\n.", b"F1e\n.", b"L017L\n.", b"p01\n.", b"g5\n."])
def test_streams_cpython_refuses_are_refused(stream: bytes) -> None:
    assert not cpython_reads(stream)[1] and not _vm(stream)[0]


_NAMES = [("os", "system"), ("builtins", "eval"), ("__builtin__", "getattr"), ("collections", "OrderedDict"),
          ("evil", "payload"), ("torch._utils", "_rebuild_tensor_v2"), ("subprocess", "Popen")]
_LINE = st.binary(max_size=8).map(lambda b: bytes(b"0123456789+-_ xXbeE.L\x00\t"[c % 21] for c in b))
_OP = st.one_of(
    st.tuples(st.sampled_from([b"I", b"L", b"F", b"g", b"p"]), _LINE).map(lambda t: t[0] + t[1] + b"\n"),
    st.sampled_from(_NAMES).map(lambda n: b"c" + n[0].encode() + b"\n" + n[1].encode() + b"\n"),
    st.sampled_from(_NAMES).map(lambda n: b"(" + b"S'" + n[0].encode() + b"'\n" + b"i" + n[0].encode() + b"\n"
                                + n[1].encode() + b"\n"),
    st.sampled_from(_NAMES).map(lambda n: b"\x8c" + bytes([len(n[0])]) + n[0].encode() + b"\x8c"
                                + bytes([len(n[1])]) + n[1].encode() + b"\x93"),
    st.sampled_from([b"(", b"t", b"R", b"0", b"1", b"2", b"N", b"]", b"a", b"e", b"}", b"s", b"u", b"b", b")", b"l",
                     b"d", b"o", b"\x85", b"\x86", b"\x87", b"\x88", b"\x89", b"\x94", b"\x81", b"S'x'\n", b"Vy\n"]),
    st.tuples(st.sampled_from([b"K", b"q", b"h"]), st.integers(0, 3)).map(lambda t: t[0] + bytes([t[1]])),
)


_GLOBAL = st.sampled_from(_NAMES).map(lambda n: b"c" + n[0].encode() + b"\n" + n[1].encode() + b"\n")
# number-shaped protocol-0 lines: whitespace, sign, base prefix, digits, then what C parsers stop at
_NUMBER = st.tuples(st.sampled_from([b"", b"", b" ", b"\t"]), st.sampled_from([b"", b"+", b"-"]),
                    st.sampled_from([b"", b"0", b"0x", b"00"]), st.binary(max_size=3).map(
                        lambda b: bytes(b"0123456789"[c % 10] for c in b)),
                    st.sampled_from([b"", b"", b"\x00", b"\x00zz", b"_1", b" ", b"L", b".5", b"e3", b"x"]),
                    ).map(b"".join)
_LEAF = st.one_of(
    st.tuples(st.sampled_from([b"I", b"L", b"F"]), _NUMBER).map(lambda t: t[0] + t[1] + b"\n"),
    st.tuples(st.sampled_from([b"I", b"L", b"F"]), _LINE).map(lambda t: t[0] + t[1] + b"\n"),
    st.sampled_from([b"N", b"K\x07", b"S'a'\n", b"Vb\n", b"\x88", b"]", b")", b"}"]),
)
_VALUE = st.recursive(_LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=4).map(lambda vs: b"(" + b"".join(vs) + b"t"),
    st.lists(inner, max_size=4).map(lambda vs: b"(" + b"".join(vs) + b"l"),
    st.tuples(_GLOBAL, st.lists(inner, max_size=3)).map(lambda t: t[0] + b"(" + b"".join(t[1]) + b"tR"),
    st.tuples(inner, st.sampled_from([b"p1\n0g1\n", b"p01\n", b"q\x02", b"\x94"])).map(lambda t: t[0] + t[1]),
), max_leaves=12)


@PARITY
@given(st.sampled_from([b"", b"\x80\x02", b"\x80\x04"]), st.lists(_VALUE, max_size=6), _VALUE)
def test_generated_well_formed_streams_match_cpython(prefix: bytes, popped: list[bytes], last: bytes) -> None:
    _check_parity(prefix + b"".join(v + b"0" for v in popped) + last + b".")


@PARITY
@given(st.sampled_from([b"", b"\x80\x02", b"\x80\x04"]), st.lists(_OP, max_size=24))
def test_generated_opcode_soup_matches_cpython(prefix: bytes, ops: list[bytes]) -> None:
    _check_parity(prefix + b"".join(ops) + b".")


_SEEDS = [c.data for c in malicious_cases() + bypass_cases()
          if c.group in ("pickle", "memo", "getattr", "code", "parity") and len(c.data) < 4096]


@PARITY
@given(st.sampled_from(range(len(_SEEDS))),
       st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete"]), st.integers(0, 1 << 16),
                          st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_malicious_streams_match_cpython(index: int, edits: list[tuple[str, int, int]]) -> None:
    _check_parity(mutate(_SEEDS[index], edits))
