"""Issue 20: the sandboxed worker's thread pools do not spin (OpenMP threads wait passively, OpenBLAS runs on one
thread) unless the user sets them: on a shared machine spinning pools made the data screens ~9x slower there."""

from __future__ import annotations

from bastion.sandbox.session import passed_env


def test_worker_thread_pools_do_not_spin_unless_the_user_says_otherwise():
    assert passed_env({"PATH": "/bin", "AWS_SECRET_ACCESS_KEY": "x"}) == {
        "OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1", "PATH": "/bin"}
    mine = {"OMP_WAIT_POLICY": "ACTIVE", "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "1"}
    assert passed_env(mine) == mine
