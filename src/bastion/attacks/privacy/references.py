"""Reference (shadow) models: trained like the target, through the shared Trainer, on chosen subsets of a pool.

A PyTorch target needs its architecture as a `module:factory` (`--arch`); a scikit-learn target exposes its
estimator as `target.estimator` and is cloned. Model i is trained with a seed derived from (seed, i) only, so a
result reproduces for a seed. Independent models train in a small process pool on CPU (each worker uses one
thread); on a GPU they train one after another on the device.

The workers are forks of this process (cheap: nothing is imported or copied), unless autograd's threads make
forking unsafe: a process whose autograd engine has started its threads (e.g. after gradients of a `.pt2` model
in some settings) fails in the fork with "Unable to handle autograd's threading in combination with fork-based
multiprocessing". The models are then trained in fresh interpreters (`reference_worker.py`), which unlike
multiprocessing's spawn do not re-run the caller's script: the job travels to them pickled in a private temporary
folder, and an architecture given as a `module:factory` string is resolved again there. A job that cannot be
pickled (a factory defined in a script) then trains in this process, one model after another.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.core.errors import ParameterError
from bastion.core.progress import progress
from bastion.core.target import Target
from bastion.core.training import Trainer, TrainHistory, seed_everything
from bastion.models.factory import build, resolve_factory


@dataclass
class ReferenceSpec:
    """How to train one model like the target: a PyTorch factory plus Trainer settings, or an estimator."""

    n_classes: int
    trainer: Trainer
    factory: Callable[[], nn.Module] | None = None
    estimator: Any = None
    arch: str | None = None  # the factory as `module:factory`, resolved again in pool workers

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.arch is not None:
            state["factory"] = None  # resolved from `arch` where it is unpickled
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.factory is None and self.arch is not None:
            self.factory = resolve_factory(self.arch)

    @classmethod
    def for_target(cls, target: Target, arch: str | Callable[[], nn.Module] | None, epochs: int = 20,
                   batch_size: int = 64, lr: float = 1e-3, optimizer: str = "adam",
                   weight_decay: float = 0.0) -> ReferenceSpec:
        trainer = Trainer(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                          weight_decay=weight_decay, device=str(target.device))
        estimator = getattr(target, "estimator", None)
        if estimator is not None and arch is None:
            if not hasattr(estimator, "predict_proba"):
                raise ParameterError(f"{type(estimator).__name__} has no predict_proba: reference models need scores")
            return cls(target.n_classes, trainer, estimator=estimator)
        if arch is None:
            raise ParameterError(f"reference models for {target.name} need its architecture: pass --arch "
                                 "module:factory (a function returning the untrained model)")
        return cls(target.n_classes, trainer, factory=resolve_factory(arch),
                   arch=arch if isinstance(arch, str) else None)

    def train(self, x: np.ndarray, y: np.ndarray, seed: int) -> Callable[[np.ndarray], np.ndarray]:
        """Train one model on (x, y); return a function giving its log-probabilities (n, C) on new inputs."""
        trainer = dataclasses.replace(self.trainer, seed=int(seed), history=TrainHistory())
        if self.estimator is not None:
            fitted = trainer.fit_estimator(self.estimator, x, y)
            return lambda xs: estimator_log_probs(fitted, xs, self.n_classes)
        seed_everything(int(seed))  # the initial weights depend on the seed too
        model = trainer.fit(build(self.factory), x, y)
        return lambda xs: module_log_probs(model, xs)

    def train_and_score(self, x: np.ndarray, y: np.ndarray, x_eval: np.ndarray, seed: int) -> np.ndarray:
        return self.train(x, y, seed)(x_eval)

    @property
    def on_cpu(self) -> bool:
        return self.estimator is not None or torch.device(self.trainer.device).type == "cpu"


@torch.no_grad()
def module_log_probs(model: nn.Module, x: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    device = next(model.parameters()).device
    xs = torch.as_tensor(x, dtype=torch.float32)
    out = [model(chunk.to(device)).float().log_softmax(-1).cpu() for chunk in xs.split(batch_size)]
    return torch.cat(out).numpy()


def estimator_log_probs(estimator: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba mapped onto all n_classes columns (a subset may miss some classes)."""
    probs = estimator.predict_proba(np.asarray(x).reshape(len(x), -1))
    full = np.full((len(x), n_classes), 1e-12)
    full[:, np.asarray(estimator.classes_, dtype=np.int64)] = probs
    return np.log(np.clip(full, 1e-12, 1.0)).astype(np.float32)


def model_seed(seed: int, i: int) -> int:
    """The training seed of reference model i: a function of (seed, i) only."""
    return int(np.random.SeedSequence([int(seed) % 2**32, i]).generate_state(1)[0])


def balanced_masks(n_points: int, n_models: int, rng: np.random.Generator) -> np.ndarray:
    """(n_models, n_points) inclusion masks: each point is in exactly half of the models (Carlini et al. 2022)."""
    if n_models < 2:
        raise ParameterError("at least 2 reference models are needed for an in/out design")
    ranks = np.argsort(rng.random((n_models, n_points)), axis=0).argsort(axis=0)
    return ranks < n_models // 2


AUTOGRAD_FORK_ERROR = "autograd's threading in combination with fork"
_JOB: tuple | None = None  # set in the parent right before forking workers; workers read their copy


def _work(i: int) -> np.ndarray:
    return train_share(_JOB, [i])[0]


def _in_forks(job: tuple, n_models: int, jobs: int, bar: Any) -> list[np.ndarray]:
    """Train the models in `jobs` forks of this process."""
    global _JOB
    _JOB, results = job, []
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            for out in pool.map(_work, range(n_models)):
                results.append(out)
                bar.advance()
    finally:
        _JOB = None
    return results


def train_share(job: tuple, indices: list[int]) -> list[np.ndarray]:
    """Train reference models `indices` of a job (what one worker does)."""
    spec, x, y, masks, x_eval, seed, threads = job
    torch.set_num_threads(threads)
    return [spec.train_and_score(x[masks[i]], y[masks[i]], x_eval, model_seed(seed, i)) for i in indices]


def _in_workers(job: bytes, n_models: int, jobs: int, bar: Any) -> list[np.ndarray]:
    """Train the models in `jobs` fresh worker interpreters, model i in worker i mod jobs."""
    results: dict[int, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="bastion-refs-") as folder:
        job_path = Path(folder) / "job.pkl"
        job_path.write_bytes(job)
        workers = []
        for w in range(jobs):
            indices = list(range(w, n_models, jobs))
            out = Path(folder) / f"out-{w}.npz"
            command = [sys.executable, "-m", "bastion.attacks.privacy.reference_worker", str(job_path), str(out),
                       ",".join(map(str, indices))]
            workers.append((subprocess.Popen(command, stdin=subprocess.DEVNULL), indices, out))
        for proc, indices, out in workers:
            if proc.wait() != 0:
                for other, _, _ in workers:
                    other.kill()
                raise RuntimeError(f"a reference-model worker failed (exit {proc.returncode})")
            with np.load(out, allow_pickle=False) as saved:  # arrays only: nothing from a worker is unpickled
                outputs = [saved[f"arr_{k}"] for k in range(len(saved.files))]
            results.update(zip(indices, outputs, strict=True))
            bar.advance(len(indices))
    return [results[i] for i in range(n_models)]


def _pickled(job: tuple) -> bytes | None:
    """The job as bytes for the workers, or None when it cannot travel (e.g. a factory defined in a script)."""
    try:
        return pickle.dumps(job)
    except (pickle.PicklingError, AttributeError, TypeError):
        return None


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_jobs(n_jobs: int | None, n_models: int, spec: ReferenceSpec) -> int:
    """Worker processes: 1 on a GPU or without fork; by default one per CPU core, at most one per model."""
    if not spec.on_cpu or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(n_models, _cores() if n_jobs is None else int(n_jobs)))


def train_references(spec: ReferenceSpec, x: np.ndarray, y: np.ndarray, masks: np.ndarray,
                     x_eval: np.ndarray, seed: int, n_jobs: int | None = None,
                     description: str = "reference models") -> np.ndarray:
    """Train model i on (x, y)[masks[i]] for every row of `masks`; return log-probs (n_models, n_eval, C)."""
    n_models = len(masks)
    if (masks.sum(axis=1) == 0).any():
        raise ParameterError("a reference model would train on no data: give a larger population")
    jobs = resolve_jobs(n_jobs, n_models, spec)
    job = (spec, x, y, masks, x_eval, seed, max(1, _cores() // jobs))
    results: list[np.ndarray] = []
    with progress(n_models, description) as bar:
        if jobs == 1:
            for i in range(n_models):
                results.append(spec.train_and_score(x[masks[i]], y[masks[i]], x_eval, model_seed(seed, i)))
                bar.advance()
        else:
            try:
                results = _in_forks(job, n_models, jobs, bar)
            except RuntimeError as exc:
                if AUTOGRAD_FORK_ERROR not in str(exc):
                    raise
                pickled = _pickled(job)
                if pickled is None:  # cannot travel: train here, one after another
                    results = train_share(job, list(range(n_models)))
                else:
                    results = _in_workers(pickled, n_models, jobs, bar)
    return np.stack(results)
