"""Issue 20: the sandboxed worker's OpenMP threads sleep at barriers by default (on a shared machine spinning
threads made Activation Clustering's screen 5x slower in the sandbox), and the user's own setting wins."""

from __future__ import annotations

from bastion.sandbox.session import passed_env


def test_worker_threads_wait_passively_unless_the_user_says_otherwise():
    assert passed_env({"PATH": "/bin", "AWS_SECRET_ACCESS_KEY": "x"}) == {"OMP_WAIT_POLICY": "PASSIVE", "PATH": "/bin"}
    assert passed_env({"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1"}) == {"OMP_WAIT_POLICY": "ACTIVE",
                                                                             "OMP_NUM_THREADS": "1"}
