"""`bastion scan`: exit codes a CI job can act on, JSON, SARIF, manifest and conversion."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from bastion.cli.scan import register
from bastion.supplychain import ScanReport

from .scan_corpus import OS_SYSTEM, onnx_model

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # keeps `scan` a sub-command, as in the real `bastion` app
        pass

    return app


@pytest.fixture()
def models(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    torch.save(net.state_dict(), folder / "net.pt")
    np.save(folder / "w.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    (folder / "model.onnx").write_bytes(onnx_model())
    return folder


def test_clean_folder_exits_0(models: Path) -> None:
    result = runner.invoke(_app(), ["scan", str(models)])
    assert result.exit_code == 0, result.output
    assert "3 file(s) scanned" in result.output


def test_findings_exit_1_and_fail_on_threshold(models: Path) -> None:
    (models / "evil.pkl").write_bytes(OS_SYSTEM)
    assert runner.invoke(_app(), ["scan", str(models)]).exit_code == 1
    assert runner.invoke(_app(), ["scan", str(models), "--fail-on", "never"]).exit_code == 0
    (models / "evil.pkl").write_bytes(b"\x80\x02cmypackage\nThing\n)R.")  # high, not critical
    assert runner.invoke(_app(), ["scan", str(models), "--fail-on", "critical"]).exit_code == 0
    assert runner.invoke(_app(), ["scan", str(models), "--fail-on", "medium"]).exit_code == 1


def test_json_is_one_object_that_round_trips(models: Path) -> None:
    (models / "evil.pkl").write_bytes(OS_SYSTEM)
    result = runner.invoke(_app(), ["scan", str(models / "evil.pkl"), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    report = ScanReport.from_dict(data)
    assert report.worst_severity() == "critical" and report.files[0].format == "pickle"
    assert report.to_dict() == data


def test_sarif_has_the_required_structure(models: Path, tmp_path: Path) -> None:
    (models / "evil.pkl").write_bytes(OS_SYSTEM)
    out = tmp_path / "scan.sarif"
    runner.invoke(_app(), ["scan", str(models), "--sarif", str(out)])
    log = json.loads(out.read_text())
    assert log["version"] == "2.1.0" and "sarif-2.1.0" in log["$schema"]
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert rules and all({"id", "shortDescription"} <= set(r) for r in rules)
    results = run["results"]
    assert results and all({"ruleId", "level", "message", "locations"} <= set(r) for r in results)
    assert all(rules[r["ruleIndex"]]["id"] == r["ruleId"] for r in results)
    assert {r["level"] for r in results} <= {"error", "warning", "note"}
    assert any(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].endswith("evil.pkl")
               for r in results)


def test_manifest_records_sha256(models: Path, tmp_path: Path) -> None:
    out = tmp_path / "manifest.json"
    assert runner.invoke(_app(), ["scan", str(models), "--manifest", str(out)]).exit_code == 0
    entries = {Path(e["path"]).name: e for e in json.loads(out.read_text())["files"]}
    assert entries["net.pt"]["sha256"] == hashlib.sha256((models / "net.pt").read_bytes()).hexdigest()
    assert entries["net.pt"]["format"] == "pytorch-zip"
    lines = tmp_path / "SHA256SUMS.sha256"
    runner.invoke(_app(), ["scan", str(models), "--manifest", str(lines)])
    assert len(lines.read_text().splitlines()) == 3


def test_convert_to_safetensors(models: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file as load_numpy
    from safetensors.torch import load_file

    out = tmp_path / "converted"
    result = runner.invoke(_app(), ["scan", str(models), "--convert-to-safetensors", "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    tensors = load_file(out / "net.safetensors")
    state = torch.load(models / "net.pt", weights_only=True)
    assert set(tensors) == set(state) and all(torch.equal(tensors[k], state[k]) for k in state)
    assert np.array_equal(load_numpy(out / "w.safetensors")["array"], np.load(models / "w.npy"))


def test_dirty_files_are_not_converted(tmp_path: Path) -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(OS_SYSTEM + buf.getvalue())  # polyglot: pickle in front of a valid torch zip
    result = runner.invoke(_app(), ["scan", str(evil), "--convert-to-safetensors"])
    assert result.exit_code == 1 and not (tmp_path / "evil.safetensors").exists()


def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from bastion.cli.main import run

    for argv in (["scan", str(tmp_path / "missing.pt")], ["scan", str(tmp_path), "--fail-on", "severe"]):
        with pytest.raises(SystemExit) as exc:
            run(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and len(err.splitlines()) == 1
