"""`bastion assess` and `bastion attack` through the sandbox: a hostile model's supply chain is never graded A, the
sandbox (or `--no-sandbox`) is recorded for reproducibility, and results equal the in-process ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bastion.core.data import save_npz
from bastion.demo.datasets import digits
from bastion.demo.models import digits_cnn
from bastion.models.export import save_model
from bastion.models.metadata import ModelMetadata
from bastion.sandbox import SandboxOptions
from bastion.sandbox.cli_jobs import sandboxed_attack
from bastion.sandbox.spec import JobSpec

from . import hostile_models as hostile
from .test_sandbox_contain import linear_weights, needs_sandbox
from .test_sandbox_deadline import data_file

ONLY_SUPPLY_CHAIN = "families:\n" + "".join(f"  {f}: {{enabled: false}}\n" for f in
                                              ("evasion", "backdoor", "extraction", "privacy"))


def assess(tmp_path: Path, model: Path, *extra: str) -> dict:
    plan = tmp_path / "plan.yaml"
    plan.write_text(ONLY_SUPPLY_CHAIN)
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "bastion", "assess", str(model), "--data", str(data_file(tmp_path)),
                           "--plan", str(plan), "--out", str(out), "--format", "json,html,md", "--no-store", "--quiet",
                           *extra], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads((out / "report.json").read_text())


def supply_chain(report: dict) -> dict:
    return next(f for f in report["families"] if f["family"] == "supply_chain")


@needs_sandbox
def test_assess_never_grades_a_hostile_models_supply_chain_a(tmp_path: Path) -> None:
    canary = tmp_path / "canary.txt"
    arch = hostile.arch_factory(tmp_path, canary, ("127.0.0.1", 9))
    report = assess(tmp_path, linear_weights(tmp_path), "--arch", arch)
    family = supply_chain(report)
    assert family["grade"] not in ("A", "B") and not canary.exists()
    metrics = {f["metric"] for f in family["findings"]}
    assert {"dynamic-write", "dynamic-exec", "dynamic-connect"} <= metrics
    assert report["environment"]["sandbox"]["sandboxed"] is True


@needs_sandbox
def test_assess_of_a_use_pickle_pt2_refuses_it_or_grades_its_supply_chain_f(tmp_path: Path) -> None:
    canary = tmp_path / "canary.txt"
    model = hostile.pt2_use_pickle(tmp_path, canary, ("127.0.0.1", 9))
    plan = tmp_path / "plan.yaml"
    plan.write_text(ONLY_SUPPLY_CHAIN)
    refused = subprocess.run([sys.executable, "-m", "bastion", "assess", str(model), "--data",
                              str(data_file(tmp_path)), "--plan", str(plan), "--no-store", "--quiet", "--out",
                              str(tmp_path / "refused")], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    family = supply_chain(assess(tmp_path, model, "--trust"))  # trusted: its payload runs, in the sandbox
    assert family["grade"] == "F" and not canary.exists()
    assert {"dynamic-write", "dynamic-connect"} <= {f["metric"] for f in family["findings"]}


@needs_sandbox
def test_assess_of_a_clean_model_is_observed_and_graded_a(tmp_path: Path) -> None:
    family = supply_chain(assess(tmp_path, hostile.torchscript_plain(tmp_path)))
    assert family["grade"] == "A"
    assert {c["name"]: c["passed"] for c in family["sanity"]}["model-code-observed"] is True


def test_no_sandbox_is_recorded_in_the_report(tmp_path: Path) -> None:
    report = assess(tmp_path, hostile.torchscript_plain(tmp_path), "--no-sandbox")
    assert report["environment"]["sandbox"] == {"sandboxed": False, "no_sandbox": True, "reason": "--no-sandbox"}
    html = (tmp_path / "report" / "report.html").read_text()
    assert "not sandboxed (--no-sandbox)" in html and "--seed 0 --no-sandbox" in html
    assert "model code not sandboxed (--no-sandbox)" in (tmp_path / "report" / "summary.md").read_text()
    assert {c["name"]: c["passed"] for c in supply_chain(report)["sanity"]}["model-code-observed"] is False


@pytest.mark.parametrize(("name", "args"), [("fgsm", ["--eps", "0.1"]),
                                           ("pgd", ["--eps", "0.1", "--steps", "5", "--seed", "0"])])
def test_results_through_the_sandbox_equal_in_process_results(tmp_path: Path, name: str, args: list[str]) -> None:
    torch.manual_seed(0)
    _, test = digits(0)
    save_npz(test.head(48), tmp_path / "test.npz")
    meta = ModelMetadata(n_classes=10, input_shape=list(test.input_shape), bounds=[0.0, 1.0])
    model = save_model(digits_cnn(), tmp_path / "cnn.pt", meta)
    # the worker gets names, parameters and paths (relative ones read from the user's folder), never objects
    spec = JobSpec("attacks", name, "evasion", args, data="test.npz", cwd=str(tmp_path),
                   module="bastion.attacks.evasion.gradient")
    load = {"path": str(model), "device": "cpu"}
    inside = sandboxed_attack(spec, load, SandboxOptions(timeout=300))
    outside = sandboxed_attack(spec, load, SandboxOptions(enabled=False))
    for result in (inside, outside):
        result.seconds = 0.0
        result.metrics.pop("sandbox")
    assert inside.to_dict() == outside.to_dict()
    assert inside.metrics["n_samples"] == 48 and inside.findings  # judged by the evasion family in the job


@needs_sandbox
def test_defend_out_leaves_the_sandbox_as_a_plain_file(tmp_path: Path) -> None:
    model, out = hostile.torchscript_plain(tmp_path), tmp_path / "out" / "defended.pt"
    done = subprocess.run([sys.executable, "-m", "bastion", "defend", "round", str(model), "--data",
                           str(data_file(tmp_path)), "--attack", "fgsm", "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["metrics"]["saved_to"] == str(out) and out.is_file() and not out.is_symlink()
    assert result["metrics"]["sandbox"]["isolation"].startswith("bubblewrap")


@needs_sandbox
@pytest.mark.parametrize("command", ["attack", "assess"])
def test_a_model_named_relative_to_the_users_folder_is_found_in_the_sandbox(tmp_path: Path, command: str) -> None:
    model, data = hostile.torchscript_plain(tmp_path), data_file(tmp_path)
    args = {"attack": ["attack", "evasion", "fgsm", model.name, "--data", data.name, "--eps", "0.1", "--json"],
            "assess": ["assess", model.name, "--data", data.name, "--out", "report", "--plan", "plan.yaml"]}[command]
    (tmp_path / "plan.yaml").write_text("families:\n  privacy: {enabled: false}\n  extraction: {enabled: false}\n"
                                        "  backdoor: {enabled: false}\n  evasion: {n_samples: 8, eps: [0.1], "
                                        "sanity: false, attacks: {fgsm: {}}}\n")
    done = subprocess.run([sys.executable, "-m", "bastion", *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "not found" not in done.stderr


def test_relative_file_parameters_reach_the_worker_as_absolute_paths(tmp_path, monkeypatch):
    from bastion.sandbox.spec import JobSpec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "truth.npz").write_bytes(b"x")
    spec = JobSpec("defenses", "activation-clustering", args=["--ground-truth", "truth.npz", "--steps=10",
                                                              "--other=truth.npz", "missing.npz"])
    truth = str(tmp_path / "truth.npz")
    assert spec.args == ["--ground-truth", truth, "--steps=10", f"--other={truth}", "missing.npz"]
    assert spec.readable() == [truth, truth]
