"""No hang, however hostile: a model that loops forever ends within the deadline with exit code 2 and one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bastion.core.data import Dataset, save_npz

from . import hostile_models as hostile
from .test_sandbox_contain import needs_sandbox


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
    if kind == "onnx":
        pytest.importorskip("onnx")
    model = hostile.torchscript_endless(tmp_path) if kind == "torchscript" else hostile.onnx_loop(tmp_path)
    done = bastion("attack", "evasion", "pgd", str(model), "--data", str(data_file(tmp_path)), "--timeout", "3")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "deadline" in errors[0] and "Traceback" not in done.stderr


@needs_sandbox
def test_scan_dynamic_of_an_endless_model_stops_at_the_deadline(tmp_path: Path) -> None:
    done = bastion("scan", "--dynamic", str(hostile.torchscript_endless(tmp_path)), "--timeout", "3")
    assert done.returncode == 2
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")][0].count("deadline") == 1


@needs_sandbox
def test_scan_dynamic_says_when_only_loading_was_observed(tmp_path: Path) -> None:
    import json

    import torch

    model = tmp_path / "bare.pt"  # no recorded input shape: the forward pass needs --data
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 3)), str(model))
    bare = bastion("scan", "--dynamic", str(model), "--json")
    assert bare.returncode == 0, bare.stderr
    rules = [f["metric"] for f in json.loads(bare.stdout)["findings"]]
    assert rules == ["dynamic-incomplete"]
    assert "note:" in bare.stderr and "pass --data" in bare.stderr
    full = bastion("scan", "--dynamic", str(model), "--data", str(data_file(tmp_path)), "--json")
    assert full.returncode == 0 and json.loads(full.stdout)["findings"] == []
