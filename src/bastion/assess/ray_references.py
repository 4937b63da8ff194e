"""Reference (shadow) models of membership attacks as Ray tasks of their own.

Inside a Ray task running a privacy job, `references_on_ray()` routes the attack's call to
`train_references(spec, x, y, masks, x_eval, seed, ...)` to one Ray task per reference model. Model i is trained
exactly as the local path trains it, `spec.train_and_score(x[masks[i]], y[masks[i]], x_eval, model_seed(seed, i))`,
so the results do not depend on where it ran. If the privacy attacks' module layout changes, the context manager
does nothing and the attack trains its references itself (same results, less parallelism).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np


def _train_one(spec: Any, x: np.ndarray, y: np.ndarray, x_eval: np.ndarray, seed: int) -> np.ndarray:
    return spec.train_and_score(x, y, x_eval, seed)


@contextlib.contextmanager
def references_on_ray(gpu_fraction: float = 0.25) -> Iterator[bool]:
    """Within the block, reference models train as Ray tasks; yields whether the routing is active."""
    try:
        import ray

        from bastion.attacks.privacy import reference_attack, references
    except ImportError:
        yield False
        return
    original = getattr(reference_attack, "train_references", None)
    model_seed = getattr(references, "model_seed", None)
    if original is None or model_seed is None or not ray.is_initialized():
        yield False
        return

    def on_ray(spec: Any, x: np.ndarray, y: np.ndarray, masks: np.ndarray, x_eval: np.ndarray, seed: int,
               n_jobs: int | None = None, description: str = "reference models") -> np.ndarray:
        if len(masks) < 2 or (np.asarray(masks).sum(axis=1) == 0).any():
            return original(spec, x, y, masks, x_eval, seed, n_jobs, description)
        on_gpu = not getattr(spec, "on_cpu", True)
        task = ray.remote(_train_one).options(num_cpus=1, num_gpus=gpu_fraction if on_gpu else 0, max_retries=0)
        shared_spec, shared_eval = ray.put(spec), ray.put(x_eval)
        refs = [task.remote(shared_spec, x[m], y[m], shared_eval, model_seed(seed, i))
                for i, m in enumerate(np.asarray(masks))]
        return np.stack(ray.get(refs))

    reference_attack.train_references = on_ray
    try:
        yield True
    finally:
        reference_attack.train_references = original
