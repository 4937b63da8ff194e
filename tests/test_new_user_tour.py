"""Issue 21 item 6: a scripted new-user tour on a model and data the demo does not ship, made here: a linear
classifier of synthetic tabular data, saved as `.pt2`, with the data as CSV files. Its findings must match figures
computed independently: for a linear model the smallest L2 change that flips a decision is |w·x + b| / ||w||, so
FGSM under L2 (one step along the loss gradient, which is ±w) is optimal and the robust accuracy at eps is the
share of correct samples farther than eps from the boundary; equation solving must return the model's weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from bastion.models.export import save_model
from bastion.models.metadata import ModelMetadata

EPS = 0.6


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="80")
    return subprocess.run([sys.executable, "-m", "bastion", *args], capture_output=True, text=True, timeout=900,
                          env=env, cwd=cwd)


def write_csv(path, x: np.ndarray, y: np.ndarray) -> None:
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["target"])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%.6f")


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tour")
    rng = np.random.default_rng(7)
    n, d = 600, 6
    x = rng.normal(size=(n, d)).astype(np.float32)
    true_w = rng.normal(size=d)
    y = (x @ true_w + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    x = np.round(x, 6)  # what the CSV files hold
    write_csv(folder / "train.csv", x[:400], y[:400])
    write_csv(folder / "test.csv", x[400:], y[400:])
    torch.manual_seed(0)
    model = torch.nn.Linear(d, 2)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    xt, yt = torch.as_tensor(x[:400]), torch.as_tensor(y[:400])
    for _ in range(300):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        optimiser.step()
    model.eval()
    lo, hi = float(x.min()) - 1, float(x.max()) + 1
    save_model(model, folder / "model.pt2", ModelMetadata(n_classes=2, input_shape=[d], bounds=[lo, hi]))
    w = (model.weight[1] - model.weight[0]).detach().double().numpy()
    b = float((model.bias[1] - model.bias[0]).detach())
    test_x, test_y = x[400:].astype(np.float64), y[400:]
    margin = test_x @ w + b
    correct = (margin > 0).astype(int) == test_y
    distance = np.abs(margin) / np.linalg.norm(w)
    return {"folder": folder, "w": w, "b": b, "clean": correct.mean(),
            "robust": (correct & (distance > EPS)).mean(), "bounds": (lo, hi)}


def test_discover_then_attack_matches_the_exact_robust_accuracy(tour):
    folder = tour["folder"]
    assert cli("--version").stdout.startswith("bastion ")
    listed = cli("list", "fgsm")
    assert "--eps" in listed.stdout and "--norm str = linf" in listed.stdout
    run = cli("attack", "evasion", "fgsm", str(folder / "model.pt2"), "--data", str(folder / "test.csv"),
              "--label", "target", "--eps", str(EPS), "--json", "--device", "cpu")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["params"]["norm"] == "l2"  # feature vectors: the norm `assess` uses too
    assert out["metrics"]["clean_accuracy"] == pytest.approx(tour["clean"], abs=1e-6)  # float32
    assert out["metrics"]["robust_accuracy"][0]["robust_accuracy"] == pytest.approx(tour["robust"], abs=1 / 200)


def test_equation_solving_recovers_the_weights(tour):
    folder = tour["folder"]
    run = cli("attack", "extraction", "equation", str(folder / "model.pt2"), "--data", str(folder / "test.csv"),
              "--pool", str(folder / "train.csv"), "--label", "target", "--json", "--device", "cpu")
    assert run.returncode == 0, run.stderr
    metrics = json.loads(run.stdout)["metrics"]
    assert metrics["assumption_holds"] is True and metrics["fidelity"] == 1.0
    weights = np.asarray(metrics["parameters"]["weights"]).reshape(-1)
    assert np.allclose(weights, tour["w"], atol=1e-3)
    assert metrics["parameters"]["bias"][0] == pytest.approx(tour["b"], abs=1e-3)


def test_assess_reports_the_same_figures_and_reads_well(tour):
    folder = tour["folder"]
    (folder / "plan.yaml").write_text(yaml.safe_dump({"version": 1, "families": {
        "evasion": {"n_samples": 200, "eps": [EPS], "attacks": {"fgsm": {}}},
        "privacy": {"n_members": 150, "n_nonmembers": 150, "attacks": {"loss": {"n_bootstrap": 50}}},
        "extraction": False, "backdoor": False}}))
    run = cli("assess", str(folder / "model.pt2"), "--data", str(folder / "test.csv"), "--train-data",
              str(folder / "train.csv"), "--label", "target", "--plan", str(folder / "plan.yaml"), "--out",
              str(folder / "report"), "--store", str(folder / "runs.sqlite"), "--device", "cpu", "--fail-on",
              "critical", "--quiet")
    assert run.returncode in (0, 1), run.stderr
    report = json.loads((folder / "report" / "report.json").read_text())
    evasion = next(f for f in report["families"] if f["family"] == "evasion")
    assert evasion["grade"] in "ABCDF" and len(evasion["grade"]) == 1
    assert evasion["headline"][f"robust_accuracy@l2={EPS:g}"] == pytest.approx(tour["robust"], abs=1 / 200)
    privacy = next(f for f in report["families"] if f["family"] == "privacy")
    assert privacy["grade"] in "ABCDF" and len(privacy["grade"]) == 1  # a linear model on 400 rows: no leak
    html = " ".join((folder / "report" / "report.html").read_text().split())
    assert "evaluation data test.csv (200 records)" in html and "evaluation data data" not in html
