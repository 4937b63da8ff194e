"""Where namespaces are unavailable Bastion says so in one line and runs a plain subprocess with resource limits
and the deadline; where strace is missing, Python audit hooks observe what Python code does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.sandbox import SandboxOptions
from bastion.sandbox.bwrap import bwrap_problem
from bastion.sandbox.cli_jobs import dynamic_scan

from . import hostile_models as hostile
from .test_sandbox_contain import linear_weights
from .test_sandbox_deadline import data_file


def bastion(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bastion", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_the_probe_is_cached_and_the_fallback_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    bwrap_problem.cache_clear()
    monkeypatch.setenv("BASTION_SANDBOX", "fallback")
    try:
        assert bwrap_problem() == "BASTION_SANDBOX=fallback is set"
        monkeypatch.delenv("BASTION_SANDBOX")
        assert bwrap_problem() == "BASTION_SANDBOX=fallback is set"  # probed once per process
    finally:
        bwrap_problem.cache_clear()


def test_fallback_runs_the_job_in_a_subprocess_and_says_so_once(tmp_path: Path) -> None:
    model = hostile.torchscript_plain(tmp_path)
    done = bastion("attack", "evasion", "fgsm", str(model), "--data", str(data_file(tmp_path)), "--json",
                   BASTION_SANDBOX="fallback")
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("bastion: no sandbox:")]
    assert len(said) == 1
    result = json.loads(done.stdout)
    assert result["metrics"]["sandbox"]["isolation"] == "subprocess (fallback)"
    assert result["metrics"]["clean_accuracy"] >= 0.0


def test_fallback_still_enforces_the_deadline(tmp_path: Path) -> None:
    model = hostile.torchscript_endless(tmp_path)
    done = bastion("attack", "evasion", "pgd", str(model), "--data", str(data_file(tmp_path)), "--timeout", "3",
                   BASTION_SANDBOX="fallback")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "deadline" in errors[0]


@pytest.mark.skipif(bwrap_problem() is not None, reason="bubblewrap with user namespaces is needed")
def test_audit_hooks_observe_python_code_when_strace_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    monkeypatch.setenv("BASTION_SANDBOX_OBSERVER", "audit")
    canary = tmp_path / "canary.txt"
    arch = hostile.arch_factory(tmp_path, canary, ("127.0.0.1", 9))
    result = dynamic_scan(str(linear_weights(tmp_path)), arch, None, SandboxOptions(timeout=120))
    assert not canary.exists()
    found = {f.metric: f for f in result.findings}
    assert {"dynamic-write", "dynamic-connect", "dynamic-exec"} <= set(found)
    assert found["dynamic-write"].evidence["observer"] == "audit-hook"
    assert str(canary) in found["dynamic-write"].evidence["targets"]
