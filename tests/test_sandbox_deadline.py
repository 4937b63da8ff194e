"""No hang, however hostile: a model that loops forever ends within the deadline with exit code 2 and one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bastion.core.data import Dataset, save_npz
from bastion.models.metadata import METADATA_KEY

from .test_sandbox_contain import META, EndlessLoop, needs_sandbox, scripted


def endless_onnx(path: Path) -> Path:
    """An ONNX graph whose `Loop` runs 2^62 iterations before its MatMul answers."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["trips"], value=helper.make_tensor("t", TensorProto.INT64, [], [2**62])),
         helper.make_node("Constant", [], ["go"], value=helper.make_tensor("g", TensorProto.BOOL, [], [True])),
         helper.make_node("Loop", ["trips", "go", "x"], ["v"], body=body),
         helper.make_node("MatMul", ["v", "w"], ["y"])],
        "endless", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [4, 3], [0.1] * 12)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, {METADATA_KEY: META.to_json()})
    onnx.save(model, str(path))
    return path


def data_file(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    path = folder / "data.npz"
    save_npz(Dataset(rng.random((6, 4), dtype=np.float32), np.array([0, 1, 2, 0, 1, 2])), path)
    return path


def bastion(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bastion", *args], capture_output=True, text=True, timeout=300)


@needs_sandbox
@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_an_endless_model_stops_at_the_deadline_with_one_line(tmp_path: Path, kind: str) -> None:
    model = scripted(EndlessLoop(), tmp_path / "loop.pt") if kind == "torchscript" else endless_onnx(
        tmp_path / "loop.onnx")
    done = bastion("attack", "evasion", "pgd", str(model), "--data", str(data_file(tmp_path)), "--timeout", "3")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "deadline" in errors[0] and "Traceback" not in done.stderr


@needs_sandbox
def test_scan_dynamic_of_an_endless_model_stops_at_the_deadline(tmp_path: Path) -> None:
    done = bastion("scan", "--dynamic", str(scripted(EndlessLoop(), tmp_path / "loop.pt")), "--timeout", "3")
    assert done.returncode == 2
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")][0].count("deadline") == 1
