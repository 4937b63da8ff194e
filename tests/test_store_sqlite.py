"""Run history in SQLite and `bastion report list|show|compare`."""

from __future__ import annotations

import json

import pytest

from bastion.assess.assessment import Assessment
from bastion.cli.main import run as cli
from bastion.core.errors import ParameterError
from bastion.core.results import Finding, Result
from bastion.families.base import FamilyReport, JobOutcome
from bastion.report.compare import compare, render_comparison_markdown
from bastion.store import RunStore, default_store_path

from .assess_fixtures import demo_run  # noqa: F401


def assessment(run_id: str, severity: str, robust: float, extra: list[Finding] | None = None) -> Assessment:
    finding = Finding(title=f"pgd leaves {robust:.0%}", family="evasion", severity=severity,
                      metric="robust_accuracy", value=robust, evidence={"attack": "pgd", "norm": "linf"})
    fam = FamilyReport("evasion", "Evasion", "assessed", grade={"high": "D", "low": "B"}[severity],
                       findings=[finding, *(extra or [])], headline={"robust_accuracy@linf=0.1": robust})
    return Assessment(run_id=run_id, created="2024-01-01T00:00:00+00:00", status="complete", families=[fam],
                      grade=fam.grade, inputs={"model": "m.pt"})


def test_runs_jobs_and_assessments_round_trip(tmp_path):
    with RunStore(tmp_path / "deep" / "runs.sqlite") as store:
        store.create_run("20240101-000000-aaaaaa", {"model": "m.pt"}, {"seed": 1}, "ab" * 32, "local", 1)
        outcome = JobOutcome("evasion/pgd/0", "evasion", "pgd", "done",
                             result=Result("evasion", "pgd", metrics={"x": 1.0}), seconds=1.5)
        store.save_job("20240101-000000-aaaaaa", outcome)
        assert store.outcomes("20240101", JobOutcome.from_json)["evasion/pgd/0"] == outcome
        with pytest.raises(ParameterError, match="has no report yet"):
            store.assessment("last", Assessment.from_json)
        a = assessment("20240101-000000-aaaaaa", "high", 0.1)
        store.finish(a)
        assert store.assessment("last", Assessment.from_json).to_dict() == a.to_dict()
        rows = store.list_runs()
        assert rows[0]["grade"] == "D" and rows[0]["worst"] == "high" and rows[0]["jobs_done"] == 1
        store.create_run("20240101-000000-bbbbbb", {"model": "m.pt"}, {}, None, "ray", 0)
        assert store.resolve("last") == "20240101-000000-bbbbbb"
        assert store.resolve("last~1") == "20240101-000000-aaaaaa"
        with pytest.raises(ParameterError, match="holds no run 'last~2'"):
            store.resolve("last~2")
        with pytest.raises(ParameterError, match="ambiguous"):
            store.resolve("20240101")
        with pytest.raises(ParameterError, match="no run 'zzz'"):
            store.resolve("zzz")
        assert store.delete("20240101-000000-bbbbbb") == "20240101-000000-bbbbbb"
        assert len(store.list_runs()) == 1


def test_store_path_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BASTION_STORE", str(tmp_path / "x.sqlite"))
    assert default_store_path() == tmp_path / "x.sqlite"
    monkeypatch.delenv("BASTION_STORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_store_path() == tmp_path / "bastion" / "runs.sqlite"


def test_compare_shows_metric_and_finding_changes():
    leak = Finding(title="loss leaks", family="privacy", severity="medium", metric="tpr_at_1pct_fpr",
                   evidence={"attack": "loss"})
    before = assessment("before", "high", 0.1, [leak])
    after = assessment("after", "low", 0.6, [Finding(title="new", family="evasion", severity="high",
                                                     metric="sanity:converged", evidence={"check": "converged"})])
    c = compare(before, after)
    assert c.grades == [{"family": "evasion", "before": "D", "after": "B"}]
    metric = c.metrics[0]
    assert metric["metric"] == "robust_accuracy@linf=0.1" and metric["delta"] == pytest.approx(0.5)
    assert [r["title"] for r in c.resolved] == ["loss leaks"]
    assert [r["metric"] for r in c.new] == ["sanity:converged"]
    assert c.changed == [{"family": "evasion", "metric": "robust_accuracy", "title": "pgd leaves 60%",
                          "before": "high", "after": "low"}]
    assert c.worse  # a new high finding
    assert not compare(before, before).worse
    text = render_comparison_markdown(c)
    assert "| evasion | D | B |" in text and "+0.5" in text and "loss leaks" in text


def test_report_cli_list_show_compare(demo_run, capsys, tmp_path):  # noqa: F811
    _, assessments, store = demo_run

    def bastion(*args):
        with pytest.raises(SystemExit) as done:
            cli([*args, "--store", str(store)])
        out = capsys.readouterr()
        return done.value.code, out.out, out.err

    code, out, _ = bastion("report", "list", "--json")
    rows = json.loads(out)
    assert code == 0 and {r["id"] for r in rows} == {a.run_id for a in assessments}
    assert all(r["status"] == "complete" for r in rows)
    first, second = assessments[:2]
    code, out, _ = bastion("report", "show", first.run_id[:-1], "--format", "json")
    assert code == 0 and json.loads(out)["run_id"] == first.run_id
    code, out, _ = bastion("report", "show", "last", "--out", str(tmp_path / "again"))
    assert code == 0 and (tmp_path / "again" / "report.html").exists()
    code, out, _ = bastion("report", "compare", first.run_id, second.run_id, "--json")
    data = json.loads(out)
    assert code == 0 and data["before"] == first.run_id and data["grades"]
    code, _, err = bastion("report", "show", "no-such-run")
    assert code == 2 and err.startswith("error: no run 'no-such-run'") and err.count("\n") == 1
