"""The report side reads the guard's audit log: `bastion report guard` summarises requests, verdicts and rule hits
per key (and fails with one line on a file that is not an audit log)."""

from __future__ import annotations

import json
import time

import pytest

from bastion.cli.main import run
from bastion.guard.audit_log import AuditLog, Entry
from bastion.store.guard_log import guard_log_summary, render_guard_summary


@pytest.fixture
def audit(tmp_path):
    log = AuditLog(tmp_path / "audit.sqlite")
    now = time.time()
    log.write(Entry(now - 7200, "alice", "free", 4, 200, "allow", [], 2.0))
    log.write(Entry(now, "alice", "free", 20, 200, "flag", ["extraction.prada", "extraction.alert"], 5.0))
    log.write(Entry(now, "alice", "free", 1, 429, "deny", ["rate.limit"], 1.0))
    log.write(Entry(now, "bob", "llm", 57, 200, "deny", ["llm.injection"], 3.0))
    log.close()
    return tmp_path / "audit.sqlite"


def test_summary_per_key(audit):
    s = guard_log_summary(audit)
    assert s["requests"] == 4 and set(s["keys"]) == {"alice", "bob"}
    alice = s["keys"]["alice"]
    assert alice["requests"] == 3 and alice["inputs"] == 25
    assert alice["verdicts"] == {"allow": 1, "flag": 1, "deny": 1} and alice["statuses"] == {"200": 2, "429": 1}
    assert alice["rules"] == {"extraction.prada": 1, "extraction.alert": 1, "rate.limit": 1}
    assert guard_log_summary(audit, since=time.time() - 60)["keys"]["alice"]["requests"] == 2
    assert "| bob | 1 | 57 | deny 1 | llm.injection 1 |" in render_guard_summary(s)


def test_cli(audit, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(["report", "guard", "--audit", str(audit), "--since", "10m", "--json"])
    assert exit_.value.code == 0
    assert json.loads(capsys.readouterr().out)["keys"]["alice"]["requests"] == 2
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 10)
    with pytest.raises(SystemExit) as exit_:
        run(["report", "guard", "--audit", str(tmp_path / "junk.sqlite")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "not a guard audit log" in err and "Traceback" not in err
