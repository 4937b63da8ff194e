"""`bastion attack privacy ...`: the JSON contract and clear errors, end to end through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from bastion.core.data import save_npz
from tests.privacy_fixtures import digits_split, overfit_model

ROOT = Path(__file__).resolve().parents[1]
ARCH = "tests.privacy_fixtures:mlp"


def bastion(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bastion", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("privacy-cli")
    paths = {"model": str(folder / "target.safetensors")}
    save_file(overfit_model().state_dict(), paths["model"])
    for name, data in zip(("members", "nonmembers", "population"), digits_split(), strict=True):
        paths[name] = str(folder / f"{name}.npz")
        save_npz(data, paths[name])
    return paths


def test_lira_json_contract(files):
    run = bastion("attack", "privacy", "lira", files["model"], "--arch", ARCH, "--members", files["members"],
                  "--nonmembers", files["nonmembers"], "--population", files["population"], "--epochs", "100",
                  "--batch-size", "32", "--n-reference", "4", "--device", "cpu", "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["family"] == "privacy" and out["attack"] == "lira"
    assert out["params"]["arch"] == ARCH and out["params"]["n_reference"] == 4
    metrics = out["metrics"]
    assert 0.5 < metrics["auc"] <= 1 and len(metrics["auc_ci"]) == 2
    assert [row["fpr"] for row in metrics["tpr_at_fpr"]] == [0.0001, 0.001, 0.01]
    assert metrics["tpr_at_fpr"][-1]["tpr"] > 0.02
    assert out["queries"] == 600 and out["findings"]


def test_inversion_through_the_cli_fails_on_high(files):
    run = bastion("attack", "privacy", "inversion", files["model"], "--arch", ARCH, "--data", files["population"],
                  "--steps", "50", "--device", "cpu", "--json", "--fail-on", "high")
    assert run.returncode == 1, run.stderr  # every digit is recovered: a high finding
    assert json.loads(run.stdout)["metrics"]["matching_rate"] >= 0.9


def test_reference_attacks_without_a_population_or_arch_fail_clearly(files):
    run = bastion("attack", "privacy", "lira", files["model"], "--arch", ARCH, "--members", files["members"],
                  "--device", "cpu")
    assert run.returncode == 2 and "--nonmembers" in run.stderr and "Traceback" not in run.stderr
