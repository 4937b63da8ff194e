"""One SARIF writer and one score table: `bastion scan --sarif` and the assessment's SARIF judge a finding alike."""

from __future__ import annotations

import json

import pytest

from bastion.assess.assessment import Assessment
from bastion.cli.main import run as cli
from bastion.report.sarif import SECURITY_SEVERITY, scan_to_sarif, to_sarif
from bastion.supplychain import scan_path

from .sarif_schema import validate

# a protocol-0 pickle that calls os.system("echo hi") when loaded (never loaded here: only scanned)
HOSTILE = b"cos\nsystem\n(S'echo hi'\ntR."


@pytest.fixture()
def hostile(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(HOSTILE)
    return path


def results_by_rule(log: dict) -> dict[str, dict]:
    run = log["runs"][0]
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    return {r["ruleId"]: {"result": r, "rule": rules[r["ruleId"]]} for r in run["results"]}


def test_scan_and_assessment_score_the_same_finding_the_same(hostile):
    report = scan_path(hostile)
    critical = [f for f in report.findings if f.severity == "critical"]
    assert critical, "the hostile pickle must give a critical finding"
    scan_log = scan_to_sarif(report)
    assessment = Assessment.from_dict({
        "run_id": "r1", "created": "2026-01-01T00:00:00+00:00", "status": "complete",
        "inputs": {"model": str(hostile)},
        "families": [{"family": "supply_chain", "title": "Supply chain", "status": "assessed",
                      "findings": [f.to_dict() for f in report.findings]}],
    })
    assess_log = to_sarif(assessment)
    assert validate(scan_log) == [] and validate(assess_log) == []
    scan, assess = results_by_rule(scan_log), results_by_rule(assess_log)
    assert set(scan) == set(assess)
    for rid in scan:
        for part in ("result", "rule"):
            for key in ("level", "kind"):
                assert scan[rid][part].get(key) == assess[rid][part].get(key)
            assert (scan[rid][part]["properties"]["security-severity"]
                    == assess[rid][part]["properties"]["security-severity"])
    worst = max(float(r["result"]["properties"]["security-severity"]) for r in scan.values())
    assert worst == float(SECURITY_SEVERITY["critical"])
    assert list(SECURITY_SEVERITY) == ["critical", "high", "medium", "low", "info"]
    assert [float(v) for v in SECURITY_SEVERITY.values()] == sorted(map(float, SECURITY_SEVERITY.values()),
                                                                   reverse=True)


def test_bastion_scan_sarif_writes_the_shared_format(hostile, tmp_path):
    out = tmp_path / "scan.sarif"
    with pytest.raises(SystemExit) as exit_info:
        cli(["scan", str(hostile), "--sarif", str(out)])
    assert exit_info.value.code == 1  # a critical finding fails the scan by default
    log = json.loads(out.read_text())
    assert validate(log) == []
    levels = {r["level"] for r in log["runs"][0]["results"]}
    assert "error" in levels
    assert all(r["ruleId"].startswith("supply_chain/") for r in log["runs"][0]["results"])
