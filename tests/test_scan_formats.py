"""Archives, compression, and the non-pickle formats: bounded, fail closed, no false alarms."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from bastion.supplychain import Limits, scan_bytes, scan_path

from .scan_corpus import (
    OS_SYSTEM,
    dense_config,
    glob,
    keras_zip,
    npy_header,
    onnx_model,
    proto,
    text,
    torch_zip,
    zip_of,
)


def _rules(report) -> set[str]:
    return {f.metric for f in report.findings}


def test_zip_bomb_is_bounded() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + b"N0" * (20 << 20) + b"N.")
    report = scan_bytes(buf.getvalue(), limits=Limits(max_member_bytes=1 << 20))
    assert any("more than" in f.title for f in report.findings) and report.worst_severity() == "high"


def test_gzip_bomb_is_bounded() -> None:
    report = scan_bytes(gzip.compress(b"\x80\x02" + bytes(30 << 20)), limits=Limits(max_member_bytes=1 << 20))
    assert "limit" in _rules(report)


def test_truncated_archive_fails_closed() -> None:
    data = torch_zip(pickle.dumps({"a": 1}, 2))
    report = scan_bytes(data[: len(data) - 30])
    assert not report.is_clean(min_severity="high")


def test_archive_nesting_depth_is_bounded() -> None:
    data = OS_SYSTEM
    for i in range(10):
        data = zip_of({f"level{i}.zip": data})
    report = scan_bytes(data, limits=Limits(max_depth=4))
    assert "limit" in _rules(report) and not report.is_clean(min_severity="high")


def test_safetensors_header_is_validated() -> None:
    def st(header: dict, body: bytes) -> bytes:
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + body

    good = st({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8))
    assert scan_bytes(good).findings == []
    overlap = st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                  "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8))
    wrong_size = st({"w": {"dtype": "F64", "shape": [2], "data_offsets": [0, 8]}}, bytes(8))
    bad_meta = st({"__metadata__": {"k": 1}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8))
    for data in (overlap, wrong_size, bad_meta):
        report = scan_bytes(data)
        assert report.files[0].format == "safetensors" and _rules(report) == {"safetensors-header"}


def test_numpy_object_array_without_code_is_low() -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([1, "text", None], dtype=object), allow_pickle=True)
    report = scan_bytes(buf.getvalue())
    assert _rules(report) == {"numpy-object-array"} and report.worst_severity() == "low"


def test_numpy_bad_header_fails_closed() -> None:
    report = scan_bytes(b"\x93NUMPY\x01\x00\x20\x00{'descr': __import__('os')}        \n")
    assert "malformed" in _rules(report)


def test_onnx_domains_and_symlinked_external_data(tmp_path: Path) -> None:
    assert _rules(scan_bytes(onnx_model(domain="evil.ops"))) == {"onnx-custom-op"}
    builtin = scan_bytes(onnx_model(domain="com.microsoft"))
    assert builtin.is_clean()
    (tmp_path / "weights.bin").symlink_to("/etc/hostname")
    model = tmp_path / "model.onnx"
    model.write_bytes(onnx_model(external="weights.bin"))
    report = scan_path(model)
    assert report.worst_severity() == "high" and "onnx-external-data" in _rules(report)


def test_onnx_model_is_loadable_by_onnxruntime(tmp_path: Path) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_model(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.array([[-1.0, 0.0, 2.0]], dtype=np.float32)})[0]
    assert out.tolist() == [[0.0, 0.0, 2.0]]


def test_keras_custom_objects_and_tf_op_lambdas() -> None:
    custom = dense_config(extra_layers=[{"module": "keras.layers", "class_name": "Dense", "registered_name":
                                         "MyPackage>Scaled", "config": {"name": "s"}}])
    assert scan_bytes(keras_zip(custom)).worst_severity() == "low"
    tfop = dense_config(extra_layers=[{"class_name": "TFOpLambda", "config": {"function": "math.add"}}])
    assert scan_bytes(keras_zip(tfop)).worst_severity() == "medium"
    broken = zip_of({"config.json": b"{not json", "metadata.json": b"{}"})
    assert "malformed" in _rules(scan_bytes(broken))


def test_skops_schema_types_are_judged() -> None:
    schema = {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode", "content": {
        "f": {"__class__": "system", "__module__": "os", "__loader__": "FunctionNode"},
        "g": {"__class__": "Custom", "__module__": "mypackage", "__loader__": "ObjectNode"}}}
    report = scan_bytes(zip_of({"schema.json": json.dumps(schema).encode()}))
    assert report.files[0].format == "skops"
    severities = {f.evidence["global"]: f.severity for f in report.findings}
    assert severities == {"os.system": "critical", "mypackage.Custom": "medium"}


def _torch_tar(main_pickle: bytes) -> bytes:
    record = proto(2) + b"(" + text("0") + text("cpu") + glob("torch", "FloatStorage") + b"t."
    storages = pickle.dumps(1, 2) + record
    storages += struct.pack("<q", 2) + struct.pack("<2f", 1.0, 2.0) + pickle.dumps([], 2)
    tensors = pickle.dumps(1, 2) + pickle.dumps(("t", "0", 0), 2) + struct.pack("<ii", 1, 0)
    tensors += struct.pack("<q", 2) + struct.pack("<q", 1) + struct.pack("<q", 0)
    members = {"sys_info": pickle.dumps({"protocol_version": 1001}, 2), "pickle": main_pickle,
               "storages": storages, "tensors": tensors}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def test_legacy_pytorch_tar_is_walked() -> None:
    benign = scan_bytes(_torch_tar(pickle.dumps({"w": 1}, 2)))
    assert benign.files[0].format == "pytorch-tar" and benign.findings == []
    malicious = scan_bytes(_torch_tar(OS_SYSTEM))
    assert malicious.worst_severity() == "critical"


def test_folder_scan_reports_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "ok.npy").write_bytes(npy_header("<f4", (1,)) + bytes(4))
    os.mkfifo(tmp_path / "pipe")  # a FIFO would block a naive reader forever
    report = scan_path(tmp_path)
    assert [s.format for s in report.files] == ["numpy"]
    assert report.errors and "not a regular file" in report.errors[0] and not report.is_clean()
