"""`bastion assess --latency-budget MS --token-budget N` gate through `--fail-on`; `bastion attack availability`
on classifiers (sponge, sponge-ga, early-exit, input-size) prints JSON and refuses bad input in one line.

Nothing asserts a time: the budgets are set far below (or far above) any latency a machine can give.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from bastion.cli.main import run
from bastion.demo.datasets import digits
from bastion.demo.early_exit import save_early_exit, train_early_exit
from bastion.families import registry


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        run(list(args))
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("avail-cli")
    train, test = digits()
    model = save_early_exit(train_early_exit(train, epochs=6), root / "ee.pt")
    np.savez(root / "test.npz", x=test.x[:24], y=test.y[:24])
    bad = test.x[:4].copy()
    bad[0, 0, 0, 0] = np.nan
    np.savez(root / "nan.npz", x=bad, y=test.y[:4])
    plan = {"families": {name: name == "availability" for name in registry()}}
    plan["families"]["availability"] = {"n_samples": 8, "attacks": {
        "sponge": {"steps": 3, "repeats": 1, "warmup": 1, "n_bootstrap": 50, "energy": False}}}
    (root / "plan.yaml").write_text(yaml.safe_dump(plan))
    return root, model


def _budget_findings(out) -> list[dict]:
    report = json.loads((out / "report.json").read_text())
    family = next(f for f in report["families"] if f["family"] == "availability")
    assert family["status"] == "assessed", family
    return [f for f in family["findings"] if f["metric"].endswith("_exceeded")]


def test_assess_latency_budget_gates_fail_on(files, tmp_path, capsys):
    root, model = files
    common = ["assess", str(model), "--data", str(root / "test.npz"), "--plan", str(root / "plan.yaml"),
              "--no-store", "--quiet", "--no-sandbox", "--format", "json"]
    code, _, err = _cli(capsys, *common, "--out", str(tmp_path / "a"), "--latency-budget", "1e-6",
                        "--fail-on", "high")
    found = _budget_findings(tmp_path / "a")
    assert code == 1, err
    assert [f["metric"] for f in found] == ["latency_budget_ms_exceeded"] and found[0]["severity"] == "high"
    assert found[0]["threshold"] == 1e-6
    code, _, err = _cli(capsys, *common, "--out", str(tmp_path / "b"), "--latency-budget", "1e9",
                        "--token-budget", "5", "--fail-on", "critical")
    assert code == 0, err
    assert _budget_findings(tmp_path / "b") == []  # a generous budget raises nothing; no LM result: no token gate


def test_budget_flags_refuse_bad_values(files, capsys):
    root, model = files
    for flag, value in (("--latency-budget", "-3"), ("--latency-budget", "nan"), ("--token-budget", "0")):
        code, _, err = _cli(capsys, "assess", str(model), "--data", str(root / "test.npz"), "--no-store", flag,
                            value, "--print-plan")
        assert code == 2 and err.count("\n") == 1 and flag in err, err
    code, out, _ = _cli(capsys, "assess", str(model), "--data", str(root / "test.npz"), "--no-store", "--no-sandbox",
                        "--plan", str(root / "plan.yaml"), "--token-budget", "40", "--latency-budget", "2.5",
                        "--print-plan")
    section = yaml.safe_load(out)["families"]["availability"]
    assert code == 0 and section["token_budget"] == 40 and section["latency_budget_ms"] == 2.5
    assert section["n_samples"] == 8  # the plan file's keys stay


@pytest.mark.parametrize("name,extra", [("sponge", ["--steps", "3"]), ("early-exit", ["--steps", "5"]),
                                        ("sponge-ga", ["--population", "8", "--generations", "2"]),
                                        ("input-size", ["--max-scale", "2", "--n-inputs", "2"])])
def test_attack_availability_json(files, capsys, name, extra):
    root, model = files
    code, out, err = _cli(capsys, "attack", "availability", name, str(model), "--data", str(root / "test.npz"),
                          "--n-samples", "8", "--repeats", "1", "--n-bootstrap", "50", "--no-sandbox", *extra,
                          "--json")
    result = json.loads(out)
    assert code == 0, err
    assert result["family"] == "availability" and result["attack"] == name
    if name == "input-size":  # the early-exit CNN's linear heads fix its input size: the limit is found at ×2
        assert result["metrics"]["limit"].startswith("refused at ×2") and not result["metrics"]["dimensions"]
        return
    assert result["metrics"]["dimensions"]
    if name == "early-exit":
        assert {d["metric"] for d in result["metrics"]["dimensions"]} >= {"depth", "latency_ms"}


def test_attack_availability_bad_input(files, capsys, tmp_path):
    root, model = files
    for args, message in ((["sponge", str(model), "--data", str(root / "nan.npz")], "NaN"),
                          (["sponge", str(model), "--data", str(tmp_path / "none.npz")], "not found"),
                          (["sponge", str(tmp_path / "none.pt"), "--data", str(root / "test.npz")], ""),
                          (["sponge", str(model), "--data", str(root / "test.npz"), "--objective", "l7"],
                           "objective")):
        code, _, err = _cli(capsys, "attack", "availability", *args, "--no-sandbox")
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (args, err)
        assert message in err, (args, err)
