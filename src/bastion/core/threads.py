"""Thread-pool settings that keep Bastion fast on machines whose cores other processes also use.

Applied by the CLI before PyTorch or NumPy is imported (`apply_thread_defaults`) and passed to every sandbox
worker (`bastion.sandbox.session`); a value the user sets wins.
"""

from __future__ import annotations

import os

# Thread settings of the CLI and of the sandbox worker unless the user sets them (docs/benchmarks/poisoning.md
# §7.3). On a machine whose cores other processes also use, a pool whose threads spin waits on a descheduled peer
# in each of LAPACK's many small parallel regions: under load 6-8 on 2 cores, Activation Clustering's 6,000-sample
# screen took 110 s, not 12.
# - PyTorch's and scikit-learn's OpenMP threads sleep at barriers instead of spinning (a 600x1568 SVD in
#   PyTorch: 3.0 s -> 0.54 s at 2 threads);
# - NumPy/SciPy's OpenBLAS (their pthreads pool, which no OpenMP setting reaches) runs on one thread: Bastion gives
#   it small matrices only (per-class covariance, MCD, ICA), where its second thread gains little (the same SVD
#   in NumPy: 2.5 s -> 0.34 s). PyTorch's own pool, which does the heavy work, keeps every core.
THREAD_ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1"}


def apply_thread_defaults() -> None:
    """Set the defaults in this process's environment where the user has not (effective only before PyTorch and
    NumPy load their thread pools)."""
    for key, value in THREAD_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
