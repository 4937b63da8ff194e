"""Run history in SQLite: one row per assessment, one row per finished job (so an interrupted run can resume).

The database lives at `--store PATH`, else `$BASTION_STORE`, else `~/.local/share/bastion/runs.sqlite`.
A run is named by its id, any unique prefix of it, `last`, or `last~N` (the N-th run before the last; `last~`
is `last~1`, as in git).

The store sits above the assessment layer's types but does not import them: it writes any object that has the
fields of `StoredJob` / `StoredAssessment` and a `to_json()`, and reads back through the decoder its caller
passes (`store.outcomes(run, JobOutcome.from_json)`, `store.assessment(run, Assessment.from_json)`).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol, TypeVar

from bastion.core.clock import new_run_id, now  # noqa: F401  (new_run_id: re-exported by bastion.store)
from bastion.core.data_files import data_fingerprint
from bastion.core.errors import BastionError, ParameterError

T = TypeVar("T")


class StoredJob(Protocol):
    """What the store keeps of a finished job (an assessment's `JobOutcome`)."""

    key: str
    family: str
    status: str
    seconds: float

    def to_json(self) -> str: ...


class StoredAssessment(Protocol):
    """What the store keeps of a finished assessment."""

    run_id: str
    status: str
    finished: str | None
    grade: str

    def worst_severity(self) -> str | None: ...

    def to_json(self) -> str: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, created TEXT NOT NULL, finished TEXT, status TEXT NOT NULL, model TEXT NOT NULL,
    model_sha256 TEXT, grade TEXT, worst TEXT, backend TEXT, seed INTEGER, inputs TEXT NOT NULL,
    plan TEXT NOT NULL, assessment TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, key TEXT NOT NULL, family TEXT NOT NULL,
    status TEXT NOT NULL, seconds REAL, outcome TEXT NOT NULL, PRIMARY KEY (run_id, key)
);
"""
COLUMNS = {"runs": {"id", "created", "finished", "status", "model", "model_sha256", "grade", "worst", "backend",
                    "seed", "inputs", "plan", "assessment"},
           "jobs": {"run_id", "key", "family", "status", "seconds", "outcome"}}


def default_store_path() -> Path:
    """`$BASTION_STORE`, else `$XDG_DATA_HOME/bastion/runs.sqlite`, else `~/.local/share/bastion/runs.sqlite`."""
    if os.environ.get("BASTION_STORE"):
        return Path(os.environ["BASTION_STORE"])
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "bastion" / "runs.sqlite"


class RunStore:
    """The SQLite run history."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_store_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(self.path), timeout=30)
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.executescript(SCHEMA)
            missing = {table: columns - {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
                       for table, columns in COLUMNS.items()}
        except (OSError, sqlite3.Error) as exc:
            raise BastionError(f"cannot open the run store {self.path}: {exc}") from None
        for table, columns in missing.items():
            if columns:
                self.conn.close()
                raise BastionError(f"{self.path} is not a Bastion run store (its table {table!r} lacks "
                                   f"{', '.join(sorted(columns))}); pass another --store")
        self.conn.row_factory = sqlite3.Row

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------------------------
    def create_run(self, run_id: str, inputs: dict[str, Any], plan: dict[str, Any], model_sha256: str | None,
                   backend: str, seed: int) -> None:
        """Record a new run; the data files' fingerprints are stored with their paths so `--resume` can check them."""
        inputs = json.loads(json.dumps(inputs))
        for role in ("data", "train_data"):
            entry = inputs.get(role)
            if isinstance(entry, dict) and entry.get("path") and Path(entry["path"]).exists():
                entry["sha256"] = data_fingerprint(entry["path"])
        with self.conn:
            self.conn.execute(
                "INSERT INTO runs (id, created, status, model, model_sha256, backend, seed, inputs, plan) "
                "VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                (run_id, now(), inputs.get("model", ""), model_sha256, backend, seed, json.dumps(inputs),
                 json.dumps(plan)))

    def save_job(self, run_id: str, outcome: StoredJob) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO jobs (run_id, key, family, status, seconds, outcome) "
                              "VALUES (?, ?, ?, ?, ?, ?)",
                              (run_id, outcome.key, outcome.family, outcome.status, outcome.seconds,
                               outcome.to_json()))

    def set_status(self, run_id: str, status: str) -> None:
        with self.conn:
            self.conn.execute("UPDATE runs SET status = ? WHERE id = ?", (status, run_id))

    def finish(self, assessment: StoredAssessment) -> None:
        with self.conn:
            self.conn.execute("UPDATE runs SET status = ?, finished = ?, grade = ?, worst = ?, assessment = ? "
                              "WHERE id = ?",
                              (assessment.status, assessment.finished, assessment.grade,
                               assessment.worst_severity(), assessment.to_json(), assessment.run_id))

    def delete(self, run_ref: str) -> str:
        run_id = self.resolve(run_ref)
        with self.conn:
            self.conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        folder = self.checkpoint_folder(run_id)
        if folder.is_dir():
            for path in folder.glob("*.npz"):
                path.unlink(missing_ok=True)
            with suppress(OSError):
                folder.rmdir()
        return run_id

    def checkpoint_folder(self, run_id: str) -> Path:
        """The run's folder next to the database, for the checkpoints of jobs a budget or deadline stopped (the
        reference models of LiRA, RMIA and shadow models: `bastion.attacks.privacy.checkpoints`)."""
        return self.path.parent / f"{self.path.stem}-checkpoints" / run_id

    @contextmanager
    def checkpoints(self, run_id: str) -> Iterator[Path]:
        """Within: attacks that can continue a stopped job keep their checkpoints in the run's folder (through
        the environment, so that worker processes see it too)."""
        from bastion.attacks.privacy.checkpoints import ENV

        folder, before = self.checkpoint_folder(run_id), os.environ.get(ENV)
        os.environ[ENV] = str(folder)
        try:
            yield folder
        finally:
            if before is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = before
            with suppress(OSError):
                folder.rmdir()  # only when empty: nothing is left to resume

    # -- reading ------------------------------------------------------------------------------------------
    def resolve(self, run_ref: str) -> str:
        """The full id of `last`, `last~N`, an id, or a unique id prefix; a clear error otherwise. As in git,
        `last~` is `last~1` (the run before the last), never the last run itself."""
        if run_ref == "last" or run_ref.startswith("last~"):
            back = "0" if run_ref == "last" else run_ref[5:] or "1"
            if not back.isdigit() or len(back) > 9:
                raise ParameterError(f"bad run {run_ref!r}: use last, or last~N for the N-th run before it")
            row = self.conn.execute("SELECT id FROM runs ORDER BY created DESC, id DESC LIMIT 1 OFFSET ?",
                                    (int(back),)).fetchone()
            if row is None:
                raise ParameterError(f"the run store {self.path} holds no run {run_ref!r}")
            return row["id"]
        rows = self.conn.execute("SELECT id FROM runs WHERE id LIKE ? ORDER BY id",
                                 (run_ref.replace("%", "") + "%",)).fetchall()
        if not rows:
            raise ParameterError(f"no run {run_ref!r} in {self.path} (see `bastion report list`)")
        if len(rows) > 1 and rows[0]["id"] != run_ref:
            raise ParameterError(f"run {run_ref!r} is ambiguous: {', '.join(r['id'] for r in rows[:5])}")
        return rows[0]["id"]

    def run(self, run_ref: str) -> dict[str, Any]:
        """The run's row with inputs and plan decoded."""
        row = self.conn.execute("SELECT * FROM runs WHERE id = ?", (self.resolve(run_ref),)).fetchone()
        out = dict(row)
        out["inputs"] = self._decoded(out["id"], "inputs", lambda: json.loads(out["inputs"]))
        out["plan"] = self._decoded(out["id"], "plan", lambda: json.loads(out["plan"]))
        if not isinstance(out["inputs"], dict) or not isinstance(out["plan"], dict):
            raise BastionError(f"run {out['id']} in {self.path} is corrupt (inputs or plan is not an object)")
        return out

    def outcomes(self, run_ref: str, decode: Callable[[str], T]) -> dict[str, T]:
        """The jobs stored for a run, by key, each decoded from its JSON text by `decode`."""
        run_id = self.resolve(run_ref)
        rows = self.conn.execute("SELECT key, outcome FROM jobs WHERE run_id = ?", (run_id,)).fetchall()
        return self._decoded(run_id, "jobs", lambda: {r["key"]: decode(r["outcome"]) for r in rows})

    def assessment(self, run_ref: str, decode: Callable[[str], T]) -> T:
        """The finished assessment of a run, decoded from its JSON text by `decode` (an interrupted run has none
        until it is resumed)."""
        row = self.run(run_ref)
        if not row["assessment"]:
            raise ParameterError(f"run {row['id']} is {row['status']} and has no report yet; resume it with "
                                 f"`bastion assess --resume {row['id']}`")
        return self._decoded(row["id"], "assessment", lambda: decode(row["assessment"]))

    def check_data_unchanged(self, row: dict[str, Any]) -> None:
        """Refuse to resume a run whose data files changed (or vanished) since it started."""
        for role in ("data", "train_data"):
            entry = row["inputs"].get(role)
            if not isinstance(entry, dict) or not entry.get("sha256"):
                continue
            path = Path(str(entry.get("path")))
            if not path.exists():
                raise ParameterError(f"{path} ({role}) no longer exists; run {row['id']} cannot be resumed")
            if data_fingerprint(path) != entry["sha256"]:
                raise ParameterError(f"{path} ({role}) changed since run {row['id']} started (sha256 differs): "
                                     "start a new assessment")

    def _decoded(self, run_id: str, what: str, decode: Any) -> Any:
        """`decode()`, with any failure on stored text reported as a corrupt run (the file may be foreign)."""
        try:
            return decode()
        except BastionError:
            raise
        except Exception as exc:  # noqa: BLE001 - stored text is untrusted: any decoding failure means corruption
            raise BastionError(f"run {run_id} in {self.path} is corrupt ({what}: {type(exc).__name__})") from None

    def list_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT r.id, r.created, r.finished, r.status, r.model, r.grade, r.worst, r.backend, r.seed, "
            "(SELECT COUNT(*) FROM jobs j WHERE j.run_id = r.id AND j.status = 'done') AS jobs_done "
            "FROM runs r ORDER BY r.created DESC, r.id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]
