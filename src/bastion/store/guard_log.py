"""A summary of a `bastion guard` audit log for the report side (`bastion report guard`, `bastion guard log
--summary`): requests, inputs, verdicts, statuses and rule hits per API key.

The audit log is the guard's SQLite file (table `requests`, written by `bastion.guard.audit_log`); it is opened
read-only, so a running server keeps writing. The store reads the table itself rather than importing the guard
(the guard sits above the store in the layer order).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from bastion.core.errors import DataError


def guard_log_summary(path: str | Path, since: float | None = None) -> dict[str, Any]:
    """{"requests", "first", "last", "keys": {key: {"requests", "inputs", "verdicts", "statuses", "rules",
    "p50_ms", "p99_ms"}}} over the log's entries (from `since`, a UNIX time, when given)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"audit log not found: {path}")
    query = "SELECT ts, key, n_inputs, status, verdict, rules, latency_ms FROM requests"
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute(query + (" WHERE ts >= ?" if since is not None else "") + " ORDER BY id",
                              () if since is None else (since,)).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise DataError(f"{path}: not a guard audit log ({exc})") from None
    keys: dict[str, dict[str, Any]] = {}
    latencies: dict[str, list[float]] = {}
    for _, key, n, status, verdict, rules, latency in rows:
        k = keys.setdefault(key, {"requests": 0, "inputs": 0, "verdicts": Counter(), "statuses": Counter(),
                                  "rules": Counter()})
        k["requests"] += 1
        k["inputs"] += int(n)
        k["verdicts"][verdict] += 1
        k["statuses"][str(status)] += 1
        try:
            k["rules"].update(r for r in json.loads(rules) if isinstance(r, str))
        except (TypeError, ValueError):
            raise DataError(f"{path}: an entry's rules are not a JSON list") from None
        latencies.setdefault(key, []).append(float(latency))
    for key, k in keys.items():
        ordered = sorted(latencies[key])
        k["p50_ms"] = ordered[int(0.5 * (len(ordered) - 1))]
        k["p99_ms"] = ordered[int(0.99 * (len(ordered) - 1))]
        for field in ("verdicts", "statuses", "rules"):
            k[field] = dict(k[field].most_common())
    return {"audit_log": str(path), "requests": len(rows), "first": rows[0][0] if rows else None,
            "last": rows[-1][0] if rows else None, "keys": keys}


def render_guard_summary(summary: dict[str, Any]) -> str:
    """The summary as a Markdown section (one table row per key)."""
    lines = [f"## Guard audit log: {summary['audit_log']}", "",
             f"{summary['requests']} request(s) from {len(summary['keys'])} key(s).", ""]
    if summary["keys"]:
        lines += ["| key | requests | inputs/tokens | verdicts | rule hits | p50 / p99 ms |",
                  "|---|---|---|---|---|---|"]
        for key, k in summary["keys"].items():
            verdicts = ", ".join(f"{v} {n}" for v, n in k["verdicts"].items())
            rules = ", ".join(f"{r} {n}" for r, n in k["rules"].items()) or "-"
            lines.append(f"| {key} | {k['requests']} | {k['inputs']} | {verdicts} | {rules} | "
                         f"{k['p50_ms']:.1f} / {k['p99_ms']:.1f} |")
    return "\n".join(lines) + "\n"
