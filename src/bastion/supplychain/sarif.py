"""SARIF 2.1.0 output (OASIS Static Analysis Results Interchange Format) for code-scanning dashboards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bastion.supplychain.findings import RULES
from bastion.supplychain.report import ScanReport

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "note"}
_SCORE = {"critical": "9.8", "high": "8.0", "medium": "5.5", "low": "3.0", "info": "0.0"}


def to_sarif(report: ScanReport, version: str = "0.1.0") -> dict[str, Any]:
    """The report as one SARIF log with one run."""
    used = sorted({f.metric for f in report.findings})
    rules = []
    for rule in used:
        description, recommendation = RULES.get(rule, (rule, ""))
        worst = max((f.severity for f in report.findings if f.metric == rule), key=list(_SCORE).index, default="info")
        rules.append({
            "id": rule,
            "name": "".join(part.capitalize() for part in rule.split("-")),
            "shortDescription": {"text": description},
            "help": {"text": recommendation},
            "defaultConfiguration": {"level": _LEVEL[worst]},
            "properties": {"tags": ["security", "supply-chain"], "security-severity": _SCORE[worst]},
        })
    results = []
    for f in report.findings:
        ev = f.evidence
        region = {"byteOffset": ev["offset"]} if ev.get("offset") is not None and not ev.get("member") else None
        location: dict[str, Any] = {"physicalLocation": {"artifactLocation": {"uri": Path(ev["file"]).as_posix()}}}
        if region:
            location["physicalLocation"]["region"] = region
        if ev.get("member"):
            location["logicalLocations"] = [{"name": ev["member"], "kind": "member"}]
        results.append({
            "ruleId": f.metric,
            "ruleIndex": used.index(f.metric),
            "level": _LEVEL[f.severity],
            "message": {"text": f.title},
            "locations": [location],
            "properties": {"severity": f.severity, **{k: ev[k] for k in ("member", "offset", "opcode", "global")
                                                       if ev.get(k) is not None}},
        })
    artifacts = [{"location": {"uri": Path(s.path).as_posix()}, "length": s.size,
                  "hashes": {"sha-256": s.sha256}} for s in report.files]
    return {
        "version": "2.1.0",
        "$schema": SCHEMA,
        "runs": [{
            "tool": {"driver": {"name": "bastion-scan", "version": version,
                                "informationUri": "https://github.com/bastion-ml/bastion", "rules": rules}},
            "artifacts": artifacts,
            "results": results,
            "invocations": [{"executionSuccessful": not report.errors,
                             "toolExecutionNotifications": [{"message": {"text": e}, "level": "error"}
                                                            for e in report.errors]}],
        }],
    }


def write_sarif(report: ScanReport, path: str | Path) -> Path:
    """Write the SARIF log to `path`."""
    out = Path(path)
    out.write_text(json.dumps(to_sarif(report), indent=2))
    return out
