"""One work budget per file, decompression bombs, and files that change while they are scanned."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

import bastion.supplychain.detect as detect
import bastion.supplychain.file_scan as api
from bastion.supplychain import Limits, scan_bytes, scan_path

from .scan_corpus import OS_SYSTEM, POP, REDUCE, STOP, TUPLE1, _fanout, blob, glob, proto, zip_of


def _rules(report) -> set[str]:
    return {f.metric for f in report.findings}


def test_fan_out_of_one_payload_is_scanned_once() -> None:
    report = scan_bytes(_fanout(OS_SYSTEM, 60, 5))  # 60**5 nested loads if each were followed
    assert "os.system" in report.files[0].globals and report.worst_severity() == "critical"


def test_nested_payloads_share_the_file_budget() -> None:
    distinct = [proto(4) + call_loads(OS_SYSTEM + bytes([i])) + STOP for i in range(10)]
    data = proto(4) + b"".join(call_loads(p) + POP for p in distinct) + b"N" + STOP
    report = scan_bytes(data, limits=Limits(max_nested=4))
    limits = [f for f in report.findings if f.metric == "limit"]
    assert limits and "nested payloads" in limits[0].title
    assert report.worst_severity() == "critical"


def call_loads(payload: bytes) -> bytes:
    return glob("pickle", "loads") + blob(payload) + TUPLE1 + REDUCE


def test_opcode_budget_covers_nested_payloads() -> None:
    inner = proto(4) + b"N0" * 50_000 + b"N."
    data = proto(4) + b"".join(call_loads(inner + bytes([i])) + POP for i in range(8)) + b"N" + STOP
    report = scan_bytes(data, limits=Limits(max_opcodes=300_000))
    assert "limit" in _rules(report) and not report.is_clean(min_severity="high")


def test_findings_are_capped() -> None:
    data = proto(4) + b"".join(glob(f"evil{i}", "x") + POP for i in range(50)) + b"N" + STOP
    report = scan_bytes(data, limits=Limits(max_findings=5))
    assert len(report.findings) <= 5 and any("findings" in f.title for f in report.findings)


def test_decompression_bomb_is_stopped_by_its_ratio() -> None:
    report = scan_bytes(gzip.compress(b"\x80\x02" + bytes(8 << 20), 9), limits=Limits(ratio_floor=1 << 20))
    assert any("1000:1" in f.title for f in report.findings)
    ordinary = scan_bytes(gzip.compress(OS_SYSTEM * 1000), limits=Limits(ratio_floor=1 << 10))
    assert "os.system" in ordinary.files[0].globals  # compressible, but far from a bomb's ratio


def test_overlapping_zip_members_are_flagged() -> None:
    data = bytearray(zip_of({"a.pkl": OS_SYSTEM, "b.pkl": OS_SYSTEM}))
    second = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 4)
    data[second + 42:second + 46] = (0).to_bytes(4, "little")  # b.pkl's directory entry points at a.pkl's data
    report = scan_bytes(bytes(data))
    assert any("share compressed bytes" in f.title for f in report.findings)


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "a.pkl").write_bytes(OS_SYSTEM)
    (tmp_path / "b.bin").write_bytes(proto(4) + b"N0" * 400_000 + b"N.")
    (tmp_path / "c.pkl").write_bytes(proto(4) + glob("collections", "OrderedDict") + b")" + REDUCE + STOP)
    return tmp_path


@pytest.mark.skipif(not hasattr(os, "fork"), reason="large files are mapped in a forked child")
def test_file_truncated_while_mapped_is_an_error_for_that_file_only(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _folder(tmp_path)
    mapped = Limits(max_read_bytes=0)  # every file takes the memory-mapped path
    before = scan_path(folder, mapped)
    assert [Path(f.path).name for f in before.files] == ["a.pkl", "b.bin", "c.pkl"] and not before.errors
    real = detect.read_buffer

    def truncating(path: Path, max_read: int):
        data, closer = real(path, max_read)
        if path.name == "b.bin":
            os.truncate(path, 10)  # the mapped pages past 10 bytes now raise SIGBUS when touched
        return data, closer

    monkeypatch.setattr(api, "read_buffer", truncating)
    after = scan_path(folder, mapped)
    assert [Path(f.path).name for f in after.files] == ["a.pkl", "c.pkl"]
    assert len(after.errors) == 1 and "b.bin" in after.errors[0] and "shrank" in after.errors[0]
    assert after.worst_severity() == "critical"  # a.pkl's result survived


def test_file_changing_size_while_read_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _folder(tmp_path)
    real_fstat, calls = os.fstat, []

    def growing(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        calls.append(fd)
        if len(calls) % 2 == 0:  # the second look, after reading: the file has grown
            return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid,
                                   st.st_size + 1, st.st_atime, st.st_mtime, st.st_ctime))
        return st

    monkeypatch.setattr(detect.os, "fstat", growing)
    report = scan_path(folder / "a.pkl")
    assert report.files == [] and "changed size" in report.errors[0]


def test_template_spellings_and_prose() -> None:
    from bastion.supplychain.template_ast import template_problems

    assert template_problems("Use os.path and subprocess.run() freely; {{ message['content'] }}") == []
    for evil in ("{{ x['__in'~'it__'] }}", "{{ x['\\x5f\\x5fclass\\x5f\\x5f'] }}", "{{ x|attr('__class__') }}",
                 "{{ xs|selectattr('__class__')|list }}", "{{ lipsum.__globals__ }}",
                 "{{ x[['__cla', 'ss__']|join] }}"):
        assert any(p.severity == "critical" for p in template_problems(evil)), evil
    assert template_problems("{{ x|attr(name) }}")[0].severity == "high"


def test_config_detection_parses_json() -> None:
    from bastion.supplychain.detect import detect_bytes

    assert detect_bytes(b'{"class_name": "x", "note": "not a model"}') == "unknown"
    assert detect_bytes(b'{"class_name": "Sequential", "config": {"layers": []}}') == "keras-config"
    assert detect_bytes(b'{"chat\\u005ftemplate": "{{ m.content }}"}') == "tokenizer-config"
    assert scan_bytes(b'{"chat\\u005ftemplate": "use os.path {{ m.content }}"}').findings == []
