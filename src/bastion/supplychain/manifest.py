"""A provenance manifest: the sha256 of every scanned file with its format and verdict."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bastion.core.results import severity_rank
from bastion.supplychain.scan_report import ScanReport


def manifest(report: ScanReport) -> dict[str, Any]:
    """One entry per file: path, sha256, size, format, worst severity found in it."""
    worst: dict[str, str] = {}
    for f in report.findings:
        path = f.evidence.get("file", "")
        if path not in worst or severity_rank(f.severity) > severity_rank(worst[path]):
            worst[path] = f.severity
    return {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool": "bastion-scan",
        "files": [{"path": s.path, "sha256": s.sha256, "size": s.size, "format": s.format,
                   "worst_severity": worst.get(s.path)} for s in report.files],
    }


def write_manifest(report: ScanReport, path: str | Path) -> Path:
    """Write the manifest as JSON; a `.sha256` path gets `sha256sum -c` lines instead."""
    out = Path(path)
    data = manifest(report)
    if out.suffix == ".sha256":
        out.write_text("".join(f"{e['sha256']}  {e['path']}\n" for e in data["files"] if e["sha256"]))
    else:
        out.write_text(json.dumps(data, indent=2))
    return out
