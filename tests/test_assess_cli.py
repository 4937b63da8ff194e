"""`bastion assess`: reports, --fail-on exit codes, --print-plan, plan errors, --resume."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import yaml

from bastion.cli.main import run as cli

from .assess_fixtures import QUICK_PLAN, cancer_inputs, quick_plan  # noqa: F401
from .test_assess_runner import Interrupting


def bastion(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        cli(list(args))
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


@pytest.fixture()
def files(cancer_demo, tmp_path):
    plan = tmp_path / "plan.yaml"
    small = json.loads(json.dumps(QUICK_PLAN))
    small["families"]["privacy"]["attacks"] = {"loss": {"n_bootstrap": 20}}
    plan.write_text(yaml.safe_dump(small))
    common = [str(cancer_demo.model_path), "--data", str(cancer_demo.test_path), "--train-data",
              str(cancer_demo.train_path), "--arch", "bastion.demo.run:breast_cancer_mlp",
              "--store", str(tmp_path / "runs.sqlite"), "--quiet"]
    return common, plan


def test_assess_writes_every_report_and_fails_on_severity(capsys, files, tmp_path):
    common, plan = files
    out = tmp_path / "report"
    code, stdout, _ = bastion(capsys, "assess", *common, "--plan", str(plan), "--out", str(out),
                              "--fail-on", "high")
    assert code == 1  # the undefended model is copied with high fidelity: a critical finding
    for name in ("report.html", "report.json", "report.sarif", "summary.md", "plan.yaml"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["worst_severity"] in ("high", "critical")
    assert "grade" in stdout and report["run_id"] in stdout
    code, _, _ = bastion(capsys, "assess", *common, "--plan", str(plan), "--out", str(out), "--fail-on",
                         "never", "--format", "json,md")
    assert code == 0


def test_print_plan_and_plan_errors(capsys, files, tmp_path):
    common, plan = files
    code, out, _ = bastion(capsys, "assess", *common, "--plan", str(plan), "--print-plan", "--seed", "9")
    printed = yaml.safe_load(out)
    assert code == 0 and printed["seed"] == 9 and printed["families"]["evasion"]["n_samples"] == 60
    bad = tmp_path / "bad.yaml"
    bad.write_text("families:\n  evasion:\n    epz: [0.1]\n")
    scratch = set(Path(tempfile.gettempdir()).glob("bastion-scratch-*"))
    code, _, err = bastion(capsys, "assess", *common, "--plan", str(bad))
    assert code == 2 and "has no key 'epz'" in err and err.count("\n") == 1
    assert set(Path(tempfile.gettempdir()).glob("bastion-scratch-*")) <= scratch  # the worker stopped, folder gone
    code, _, err = bastion(capsys, "assess", common[0], "--quiet", "--store", str(tmp_path / "s.sqlite"))
    assert code == 2 and "needs MODEL and --data" in err


def test_resume_an_interrupted_run_from_the_cli(capsys, files, cancer_inputs, quick_plan, tmp_path):  # noqa: F811
    from bastion.assess.assessment import Assessment
    from bastion.assess.runner import Runner
    from bastion.store import RunStore

    common, _ = files
    store_path = tmp_path / "runs.sqlite"
    plan = quick_plan.merged({"families": {"privacy": False, "backdoor": False}})
    with RunStore(store_path) as store, pytest.raises(KeyboardInterrupt):
        Runner(store, Interrupting(2), show_progress=False).run(cancer_inputs, plan, run_id="20240101-000000-abcdef")
    code, out, _ = bastion(capsys, "assess", "--resume", "last", "--store", str(store_path), "--quiet",
                           "--out", str(tmp_path / "resumed"))
    assert code == 0, out
    with RunStore(store_path) as store:
        row = store.run("20240101")
        assert row["status"] == "complete" and store.assessment("last", Assessment.from_json).plan == plan.to_dict()
    code, _, err = bastion(capsys, "assess", *common[:1], "--resume", "last", "--store", str(store_path))
    assert code == 2 and "--resume takes the model" in err


def test_ci_example_uses_real_flags():
    from pathlib import Path

    import typer

    from bastion.cli.main import app

    workflow = yaml.safe_load((Path(__file__).resolve().parents[1] / "docs" / "ci-example.yml").read_text())
    steps = {s.get("name"): s for s in workflow["jobs"]["bastion"]["steps"]}
    command = typer.main.get_command(app)
    for name, sub in (("Assess the model", ("assess",)), ("Compare with the previous run", ("report", "compare"))):
        words = steps[name]["run"].split()
        assert words[: 1 + len(sub)] == ["bastion", *sub]
        cmd = command
        for part in sub:
            cmd = cmd.commands[part]
        known = {opt for p in cmd.params for opt in getattr(p, "opts", [])}
        flags = {w for w in words if w.startswith("--")}
        assert flags and flags <= known, flags - known
