"""Issue 20: the sandboxed worker's thread pools do not spin (OpenMP threads wait passively, OpenBLAS runs on one
thread) unless the user sets them, in the worker and in the CLI: on a shared machine spinning pools made the data
screens ~9x slower."""

from __future__ import annotations

from bastion.sandbox.session import passed_env


def test_worker_thread_pools_do_not_spin_unless_the_user_says_otherwise():
    assert passed_env({"PATH": "/bin", "AWS_SECRET_ACCESS_KEY": "x"}) == {
        "OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1", "PATH": "/bin"}
    mine = {"OMP_WAIT_POLICY": "ACTIVE", "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "1"}
    assert passed_env(mine) == mine


def test_the_cli_sets_the_same_defaults_before_torch_loads(monkeypatch):
    import subprocess
    import sys

    code = ("import os, sys\nfrom bastion.cli.main import run\n"
            "try:\n    run(['--version'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('OPENBLAS_NUM_THREADS'), 'torch' in sys.modules)")
    for key in ("OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-3:] == ["PASSIVE", "1", "False"]
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice wins
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-3] == "ACTIVE"
