"""The guard's audit log: one SQLite row per request, written in WAL mode and committed before the answer leaves.

A committed row survives a `kill -9` of the server (WAL with synchronous=NORMAL loses nothing on a process crash,
only possibly the last transactions on a power loss). Raw inputs are stored only when the server runs with
`--log-inputs`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.core.errors import DataError

SCHEMA = """CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, key TEXT NOT NULL, tier TEXT, n_inputs INTEGER NOT NULL,
    status INTEGER NOT NULL, verdict TEXT NOT NULL, rules TEXT NOT NULL, latency_ms REAL NOT NULL, inputs TEXT)"""


@dataclass
class Entry:
    ts: float
    key: str
    tier: str | None
    n_inputs: int
    status: int
    verdict: str
    rules: list[str]
    latency_ms: float
    inputs: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "inputs" or v is not None}


class AuditLog:
    """Append-only writer (thread-safe); `used(key)` counts a key's answered queries (for budgets after a restart)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute(SCHEMA)
            self.db.execute("CREATE INDEX IF NOT EXISTS requests_key ON requests(key, ts)")
        except sqlite3.Error as exc:
            raise DataError(f"{self.path}: cannot open the audit log ({exc})") from None
        self.lock = threading.Lock()

    def write(self, entry: Entry) -> None:
        row = (entry.ts, entry.key, entry.tier, entry.n_inputs, entry.status, entry.verdict, json.dumps(entry.rules),
               entry.latency_ms, None if entry.inputs is None else json.dumps(entry.inputs))
        with self.lock:
            self.db.execute("INSERT INTO requests (ts, key, tier, n_inputs, status, verdict, rules, latency_ms, "
                            "inputs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)  # autocommit: durable on return

    def used(self, key: str) -> int:
        with self.lock:
            (n,) = self.db.execute("SELECT COALESCE(SUM(n_inputs), 0) FROM requests WHERE key = ? AND status = 200",
                                   (key,)).fetchone()
        return int(n)

    def close(self) -> None:
        with self.lock:
            self.db.close()


def read_log(path: str | Path, key: str | None = None, since: float | None = None,
             limit: int | None = None) -> list[Entry]:
    """Entries of the audit log at `path`, oldest first, filtered by key and time (opened read-only)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"audit log not found: {path}")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            query, args = "SELECT ts, key, tier, n_inputs, status, verdict, rules, latency_ms, inputs FROM requests", []
            where = []
            if key is not None:
                where.append("key = ?")
                args.append(key)
            if since is not None:
                where.append("ts >= ?")
                args.append(since)
            if where:
                query += " WHERE " + " AND ".join(where)
            query += " ORDER BY id"
            if limit:
                query += f" LIMIT {int(limit)}"
            rows = db.execute(query, args).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise DataError(f"{path}: not a guard audit log ({exc})") from None
    return [Entry(*r[:6], json.loads(r[6]), r[7], None if r[8] is None else json.loads(r[8])) for r in rows]


def parse_since(text: str, now: float | None = None) -> float:
    """A time: `30s`, `10m`, `2h`, `1d` ago, or an ISO 8601 date/time (UTC unless it says otherwise)."""
    from datetime import datetime, timezone

    now = time.time() if now is None else now
    text = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise DataError(f"--since {text!r}: expected 30s, 10m, 2h, 1d or an ISO date/time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
