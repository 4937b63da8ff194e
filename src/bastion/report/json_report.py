"""The JSON report: the whole Assessment plus a summary block, lossless (`Assessment.from_dict` reads it back)."""

from __future__ import annotations

import json
from typing import Any

from bastion.assess.assessment import Assessment
from bastion.families.grading import count_by_severity

SCHEMA_ID = "bastion-assessment/1"


def report_dict(a: Assessment) -> dict[str, Any]:
    """`schema`, `summary` (grades, counts, worst severity) and every field of the assessment."""
    summary = {
        "grade": a.grade,
        "complete": a.complete,
        "worst_severity": a.worst_severity(),
        "counts": count_by_severity(a.findings()),
        "families": {f.family: {"grade": f.grade, "status": f.status, "findings": len(f.findings)}
                     for f in a.families},
    }
    return {"schema": SCHEMA_ID, "summary": summary, **a.to_dict()}


def render_json(a: Assessment) -> str:
    return json.dumps(report_dict(a), indent=1)


def load_report(text: str) -> Assessment:
    """Read a JSON report back into an Assessment."""
    data = json.loads(text)
    data.pop("schema", None)
    data.pop("summary", None)
    return Assessment.from_dict(data)
