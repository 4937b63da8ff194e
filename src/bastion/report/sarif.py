"""SARIF 2.1.0 (OASIS Static Analysis Results Interchange Format) for code-scanning dashboards: the one writer.

Both `bastion assess` (`to_sarif`, one run per assessment) and `bastion scan --sarif` (`scan_to_sarif`, one run
per scan) go through the same rule, result and location builders and the same score table: one rule per
(family, metric), one result per finding. Findings above info are `kind: fail` with a level (critical/high ->
error, medium -> warning, low -> note) and GitHub's `security-severity`; informational findings are
`kind: informational` with level `none`, as the spec requires.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from bastion.assess.assessment import Assessment
from bastion.core.results import Finding, severity_rank
from bastion.families.grading import finding_key
from bastion.report.markdown import md_escape
from bastion.supplychain.scan_report import ScanReport
from bastion.supplychain.verdicts import RULES

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "none"}
SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0", "info": "0.0"}
INFORMATION_URI = "https://github.com/bastion-ml/bastion"


def artifact_uri(path: str) -> str:
    """A relative URI for files under the working folder, a file:// URI for others, URLs unchanged."""
    if "://" in path:
        return path
    p = Path(path)
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return p.resolve().as_uri()


def rule_id(family: str, finding: Finding) -> str:
    return f"{family}/{finding.metric}"


def _rule(rid: str, family: str, findings: list[Finding], described: tuple[str, str] | None = None
          ) -> dict[str, Any]:
    """One reportingDescriptor; `described` = (description, recommendation) when a rule table has them."""
    worst = max(findings, key=lambda f: severity_rank(f.severity))
    first = findings[0]
    if described is not None:
        first = Finding(title=first.title, family=first.family, severity=first.severity, metric=first.metric,
                        description=described[0], recommendation=described[1])
    tags = ["security", "machine-learning", family] + sorted({t for f in findings for t in f.atlas + f.owasp})
    help_text = first.recommendation or first.description or rid
    return {
        "id": rid,
        "name": "".join(w.capitalize() for w in rid.replace("/", "_").replace("-", "_").replace(":", "_").split("_")),
        "shortDescription": {"text": first.description or rid},
        "fullDescription": {"text": f"{family}: {first.description or first.metric}"},
        "help": {"text": help_text, "markdown": md_escape(help_text)},
        "defaultConfiguration": {"level": LEVEL[worst.severity] if worst.severity != "info" else "note"},
        "properties": {"tags": tags, "security-severity": SECURITY_SEVERITY[worst.severity]},
    }


def _location(default_path: str, finding: Finding) -> dict[str, Any]:
    path = str(finding.evidence.get("file") or default_path)
    location: dict[str, Any] = {"physicalLocation": {"artifactLocation": {"uri": artifact_uri(path)}}}
    offset = finding.evidence.get("offset")
    if isinstance(offset, int) and not finding.evidence.get("member"):
        location["physicalLocation"]["region"] = {"byteOffset": offset}
    if finding.evidence.get("member"):
        location["logicalLocations"] = [{"name": str(finding.evidence["member"]), "kind": "member"}]
    return location


def rules_and_results(pairs: list[tuple[str, Finding]], default_path: str, key: Any = None,
                      described: dict[str, tuple[str, str]] | None = None
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """SARIF rules and results for (family, finding) pairs; `key(family, finding)` names a finding stably for its
    fingerprint, `described` maps a metric to (description, recommendation)."""
    ids: list[str] = []
    grouped: dict[str, list[Finding]] = {}
    for family, finding in pairs:
        rid = rule_id(family, finding)
        if rid not in grouped:
            ids.append(rid)
            grouped[rid] = []
        grouped[rid].append(finding)
    rules = [_rule(rid, rid.split("/", 1)[0], grouped[rid],
                   (described or {}).get(grouped[rid][0].metric)) for rid in ids]
    results = []
    for family, finding in pairs:
        rid = rule_id(family, finding)
        name = key(family, finding) if key else _finding_name(family, finding)
        evidence = {k: finding.evidence[k] for k in ("member", "offset", "opcode", "global")
                    if finding.evidence.get(k) is not None}
        results.append({
            "ruleId": rid,
            "ruleIndex": ids.index(rid),
            "kind": "fail" if finding.severity != "info" else "informational",
            "level": LEVEL[finding.severity],
            "message": {"text": finding.title},
            "locations": [_location(default_path, finding)],
            "partialFingerprints": {"bastionFinding/v1": hashlib.sha256(name.encode()).hexdigest()[:32]},
            "properties": {"severity": finding.severity, "family": family, "metric": finding.metric,
                           "value": finding.value, "threshold": finding.threshold, "atlas": finding.atlas,
                           "owasp": finding.owasp, "security-severity": SECURITY_SEVERITY[finding.severity],
                           **evidence},
        })
    return rules, results


def _finding_name(family: str, finding: Finding) -> str:
    ev = finding.evidence
    return "|".join(str(x) for x in (family, finding.metric, ev.get("file"), ev.get("member"), ev.get("offset"),
                                     finding.title))


def to_sarif(a: Assessment) -> dict[str, Any]:
    """The assessment as one SARIF 2.1.0 log."""
    pairs = [(f.family, x) for f in a.families for x in f.findings]
    model_path = str(a.inputs.get("model") or a.model.get("path") or "model")
    rules, results = rules_and_results(pairs, model_path, finding_key)
    errors = [e for f in a.families for e in f.errors]
    artifact: dict[str, Any] = {"location": {"uri": artifact_uri(model_path)}}
    if a.model.get("sha256"):
        artifact["hashes"] = {"sha-256": a.model["sha256"]}
    version = a.environment.get("packages", {}).get("bastion-ml", "0.0.0")
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "Bastion", "version": version, "semanticVersion": version,
                                "informationUri": INFORMATION_URI, "rules": rules}},
            "automationDetails": {"id": f"bastion/assess/{a.run_id}"},
            "invocations": [{
                "executionSuccessful": a.complete,
                "startTimeUtc": _utc(a.created),
                **({"endTimeUtc": _utc(a.finished)} if a.finished else {}),
                "toolExecutionNotifications": [{"level": "error", "message": {"text": e}} for e in errors],
            }],
            "artifacts": [artifact],
            "results": results,
            "properties": {"grade": a.grade, "families": {f.family: f.grade for f in a.families},
                           "seed": a.seed, "backend": a.backend},
        }],
    }


def _utc(stamp: str) -> str:
    """SARIF wants UTC date-times ending in Z."""
    return stamp.replace("+00:00", "Z")


def render_sarif(a: Assessment) -> str:
    return json.dumps(to_sarif(a), indent=1)


def scan_to_sarif(report: ScanReport, version: str = "0.1.0") -> dict[str, Any]:
    """A supply-chain scan (`bastion scan --sarif`) as one SARIF 2.1.0 log, scored like an assessment."""
    pairs = [(f.family or "supply_chain", f) for f in report.findings]
    rules, results = rules_and_results(pairs, "model", described=RULES)
    artifacts = [{"location": {"uri": artifact_uri(s.path)}, "length": s.size, "hashes": {"sha-256": s.sha256}}
                 for s in report.files]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "Bastion", "version": version, "semanticVersion": version,
                                "informationUri": INFORMATION_URI, "rules": rules}},
            "automationDetails": {"id": "bastion/scan"},
            "invocations": [{"executionSuccessful": not report.errors,
                             "toolExecutionNotifications": [{"level": "error", "message": {"text": e}}
                                                            for e in report.errors]}],
            "artifacts": artifacts,
            "results": results,
        }],
    }


def write_sarif(log: dict[str, Any], path: str | Path) -> Path:
    """Write a SARIF log to `path`."""
    out = Path(path)
    out.write_text(json.dumps(log, indent=2))
    return out
