"""The symbolic pickle machine and the allow/deny policy."""

from __future__ import annotations

import pickle
from collections import OrderedDict

import numpy as np
import pytest

from bastion.supplychain import Limits, scan_bytes
from bastion.supplychain.import_policy import judge

from .scan_corpus import OS_SYSTEM, blob, call, glob, proto


def _rules(report) -> set[str]:
    return {f.metric for f in report.findings}


@pytest.mark.parametrize("protocol", range(6))
def test_every_protocol_resolves_the_real_globals(protocol: int) -> None:
    obj = OrderedDict(w=np.arange(6, dtype=np.float32).reshape(2, 3), n=np.int64(3), s={1, 2}, b=b"\x00\x01")
    report = scan_bytes(pickle.dumps(obj, protocol=protocol))
    assert report.findings == []
    assert report.files[0].format == "pickle"
    names = set(report.files[0].globals)
    assert "collections.OrderedDict" in names
    assert any(n.endswith("_reconstruct") or n.endswith("_frombuffer") for n in names)


def test_policy_allows_data_and_grades_code() -> None:
    assert judge("torch._utils", "_rebuild_tensor_v2").severity is None
    assert judge("sklearn.linear_model._logistic", "LogisticRegression").severity is None
    assert judge("numpy", "log1p").severity is None
    assert judge("__builtin__", "set", 2).severity is None
    assert judge("numpy", "load").severity == "critical"
    assert judge("numpy.f2py", "compile").severity == "critical"
    assert judge("torch", "load").severity == "critical"
    assert judge("builtins", "getattr").severity == "high"
    assert judge("sklearn.utils._testing", "TempMemmap").severity == "high"
    assert judge("sklearn.utils", "fetch_something").severity == "high"
    assert judge("__main__", "Net").rule == "unsafe-global"
    assert judge("mypackage.layers", "Custom").rule == "unknown-global"
    assert judge("__torch__.m", "Net", context="torchscript").severity is None
    assert judge("__torch__.m", "Net").severity == "high"


def test_stack_underflow_fails_closed() -> None:
    report = scan_bytes(b"\x80\x02R.")
    assert _rules(report) == {"malformed"} and report.worst_severity() == "high"


def test_invalid_utf8_name_fails_closed() -> None:
    report = scan_bytes(b"\x80\x04X\x02\x00\x00\x00\xff\xfe\x8c\x01x\x93.")
    assert "malformed" in _rules(report)


def test_missing_memo_entry_fails_closed() -> None:
    assert "malformed" in _rules(scan_bytes(b"\x80\x02h\x05."))


def test_opcode_limit_is_enforced() -> None:
    data = pickle.dumps(list(range(300_000)), protocol=0)
    report = scan_bytes(data, limits=Limits(max_opcodes=100_000))
    assert any("opcodes" in f.title for f in report.findings) and report.worst_severity() == "high"


def test_second_pickle_in_the_stream_is_scanned() -> None:
    report = scan_bytes(pickle.dumps({"a": 1}, protocol=2) + OS_SYSTEM)
    assert report.worst_severity() == "critical"


def test_garbage_after_the_pickle_is_only_noted() -> None:
    report = scan_bytes(pickle.dumps([1, 2], protocol=4) + b"\x00\x01 trailing bytes")
    assert _rules(report) == {"trailing-data"} and report.is_clean()


def test_nested_payloads_stop_at_the_depth_limit() -> None:
    payload = OS_SYSTEM
    for _ in range(12):
        payload = proto(4) + call(glob("pickle", "loads"), blob(payload)) + b"."
    report = scan_bytes(payload, limits=Limits(max_depth=4))
    assert "limit" in _rules(report) and report.worst_severity() == "critical"


def test_huge_protocol0_integer_does_not_hang() -> None:
    report = scan_bytes(b"\x80\x02I" + b"9" * 200_000 + b"\n.")
    assert report.files[0].format == "pickle" and report.is_clean()


def test_joblib_arrays_are_skipped_exactly() -> None:
    import io

    import joblib

    buf = io.BytesIO()
    joblib.dump({"a": np.arange(1000.0), "o": np.array([1, "x", None], dtype=object)}, buf)
    report = scan_bytes(buf.getvalue())
    assert report.files[0].format == "joblib" and report.findings == []
    assert "joblib.numpy_pickle.NumpyArrayWrapper" in report.files[0].globals
