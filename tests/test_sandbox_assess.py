"""`bastion assess` and `bastion attack` through the sandbox: a hostile model's supply chain is never graded A, the
sandbox (or `--no-sandbox`) is recorded for reproducibility, and results equal the in-process ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bastion.attacks.evasion.gradient import FGSM, PGD
from bastion.demo.data import digits
from bastion.demo.models import digits_cnn
from bastion.models.export import save_model
from bastion.models.metadata import ModelMetadata
from bastion.sandbox import SandboxOptions
from bastion.sandbox.commands import sandboxed_attack

from .test_sandbox_contain import Plain, hostile_factory, needs_sandbox, scripted, weights
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
    canary.write_text("untouched")
    arch = hostile_factory(tmp_path, canary, 9)
    report = assess(tmp_path, weights(tmp_path), "--arch", arch)
    family = supply_chain(report)
    assert family["grade"] not in ("A", "B") and canary.read_text() == "untouched"
    metrics = {f["metric"] for f in family["findings"]}
    assert {"dynamic-write", "dynamic-exec", "dynamic-connect"} <= metrics
    assert report["environment"]["sandbox"]["sandboxed"] is True


@needs_sandbox
def test_assess_of_a_clean_model_is_observed_and_graded_a(tmp_path: Path) -> None:
    family = supply_chain(assess(tmp_path, scripted(Plain(), tmp_path / "plain.pt")))
    assert family["grade"] == "A"
    assert {c["name"]: c["passed"] for c in family["sanity"]}["model-code-observed"] is True


def test_no_sandbox_is_recorded_in_the_report(tmp_path: Path) -> None:
    report = assess(tmp_path, scripted(Plain(), tmp_path / "plain.pt"), "--no-sandbox")
    assert report["environment"]["sandbox"] == {"sandboxed": False, "no_sandbox": True, "reason": "--no-sandbox"}
    html = (tmp_path / "report" / "report.html").read_text()
    assert "not sandboxed (--no-sandbox)" in html and "--seed 0 --no-sandbox" in html
    assert "model code not sandboxed (--no-sandbox)" in (tmp_path / "report" / "summary.md").read_text()
    assert {c["name"]: c["passed"] for c in supply_chain(report)["sanity"]}["model-code-observed"] is False


@pytest.mark.parametrize("attack", [FGSM(eps=0.1), PGD(eps=0.1, steps=5, seed=0)], ids=["fgsm", "pgd"])
def test_results_through_the_sandbox_equal_in_process_results(tmp_path: Path, attack) -> None:
    torch.manual_seed(0)
    _, test = digits(0)
    data = test.head(48)
    meta = ModelMetadata(n_classes=10, input_shape=list(data.input_shape), bounds=[0.0, 1.0])
    model = save_model(digits_cnn(), tmp_path / "cnn.pt", meta)
    load = {"path": str(model), "data": data, "device": "cpu"}
    inside = sandboxed_attack(attack, data, {}, load, SandboxOptions(timeout=300), [])
    outside = sandboxed_attack(attack, data, {}, load, SandboxOptions(enabled=False), [])
    for result in (inside, outside):
        result.seconds = 0.0
        result.metrics.pop("sandbox")
    assert inside.to_dict() == outside.to_dict()
