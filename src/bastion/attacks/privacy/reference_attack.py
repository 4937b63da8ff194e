"""Base of membership attacks that train reference models (LiRA, RMIA, shadow models).

The pool design follows Carlini et al. (2022): every pool record is in exactly half of the reference models.
Online, the pool holds the candidates themselves plus population records, up to twice the target's training-set
size (`train_size`, by default the number of members given), so that each reference model trains on about as
many records as the target did; offline, the pool is drawn from the
population only and no reference model sees a candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.core.errors import BudgetSpent, ParameterError
from bastion.core.target import Target

from .base import MembershipAttack, MembershipData, check_int, target_log_probs
from .references import ReferenceSpec, balanced_masks, train_references


@dataclass
class ReferenceRun:
    """Trained reference models, described by their in/out design and their log-probs on evaluated records."""

    masks: np.ndarray  # (n_models, n_pool): pool record j is in model i's training set
    pool_x: np.ndarray
    pool_y: np.ndarray
    pool_source: np.ndarray  # (n_pool,): population index of each pool record, -1 for a candidate
    log_probs: np.ndarray  # (n_models, n_eval, n_classes)

    def candidates_in(self, n_candidates: int) -> np.ndarray:
        """(n_models, n_candidates) IN mask of the candidates (all False offline)."""
        out = np.zeros((len(self.masks), n_candidates), dtype=bool)
        is_candidate = self.pool_source < 0
        out[:, : int(is_candidate.sum())] = self.masks[:, is_candidate]
        return out

    def population_in(self, population_index: np.ndarray) -> np.ndarray:
        """(n_models, len(population_index)) IN mask of population records (False when outside the pool)."""
        where = np.full(int(max(self.pool_source.max(initial=-1), population_index.max(initial=-1))) + 1, -1)
        from_pop = self.pool_source >= 0
        where[self.pool_source[from_pop]] = np.nonzero(from_pop)[0]
        pos = where[population_index]
        out = np.zeros((len(self.masks), len(population_index)), dtype=bool)
        out[:, pos >= 0] = self.masks[:, pos[pos >= 0]]
        return out

    @property
    def train_size(self) -> float:
        return float(self.masks.sum(axis=1).mean())


def reference_fit(log_probs: np.ndarray, y: np.ndarray, in_mask: np.ndarray) -> dict[str, float]:
    """Accuracy of the reference models on records they trained on and on the others (a sanity check); a key is
    left out when no record is in that group (offline, no reference model trains on a candidate)."""
    correct = log_probs.argmax(-1) == y[None]
    out = {}
    if in_mask.any():
        out["reference_train_accuracy"] = float(correct[in_mask].mean())
    if (~in_mask).any():
        out["reference_test_accuracy"] = float(correct[~in_mask].mean())
    return out


class ReferenceAttack(MembershipAttack):
    """Shared parameters of attacks that train reference models through the Trainer."""

    # Each `score` call trains its reference models, so scoring is never split into calls; under a query budget
    # or a deadline the target is queried (after the reference models are trained) in chunks of `query_batch`
    # candidates, half members and half non-members, and a stop keeps the candidates queried (`query_target`).
    budget_batch = 0
    query_batch = 64

    def __init__(self, arch: str | Callable[[], nn.Module] | None = None, *, n_reference: int = 8,
                 mode: str = "online", epochs: int = 20, batch_size: int = 64, lr: float = 1e-3,
                 optimizer: str = "adam", weight_decay: float = 0.0, n_jobs: int | None = None,
                 train_size: int | None = None, n_bootstrap: int = 200, seed: int = 0):
        super().__init__(n_bootstrap=n_bootstrap, seed=seed)
        if mode not in ("online", "offline"):
            raise ParameterError(f"mode must be online or offline, got {mode!r}")
        self.arch = arch
        self.n_reference = check_int(n_reference, "n_reference", 2 if mode == "online" else 1)
        self.mode = mode
        self.epochs = check_int(epochs, "epochs", 1)
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.lr = float(lr)
        self.optimizer = optimizer
        self.weight_decay = float(weight_decay)
        self.n_jobs = None if n_jobs is None else check_int(n_jobs, "n_jobs", 1)
        self.train_size = None if train_size is None else check_int(train_size, "train_size", 1)
        if self.lr <= 0 or self.weight_decay < 0:
            raise ParameterError("lr must be positive and weight_decay non-negative")

    @property
    def needs_population(self) -> bool:  # type: ignore[override]
        return self.mode == "offline"


    def scored(self, target: Target, data: MembershipData) -> tuple[np.ndarray, np.ndarray, dict[str, Any], str]:
        """All candidates' scores; when a budget or deadline stopped the target's queries, the scores of the
        candidates it answered (the reference models were all trained) and why it stopped."""
        self.queried_: np.ndarray | None = None
        self.stopped_: BudgetSpent | None = None
        scores_m, scores_n, extra = self.score(target, data)
        if self.stopped_ is None or self.queried_ is None:
            return scores_m, scores_n, extra, ""
        got_m, got_n = self.queried_[: data.n_members], self.queried_[data.n_members:]
        if not got_m.any() or not got_n.any():
            raise self.stopped_
        reason = (f"{self.stopped_}: {int(got_m.sum())} of {len(got_m)} members and {int(got_n.sum())} of "
                  f"{len(got_n)} non-members scored against {self.n_reference} trained reference models")
        return scores_m[got_m], scores_n[got_n], extra, reason

    def query_target(self, target: Target, x: np.ndarray, n_candidates: int, n_members: int) -> torch.Tensor:
        """The target's log-probabilities on `x` (the candidates, members first, then any other records the
        attack needs). Under a budget or deadline: the other records first, then the candidates in balanced
        chunks; a stop leaves NaN rows for the candidates not answered (`queried_` marks the others)."""
        if not target.counter.limited:
            return target_log_probs(target, x)
        head = target_log_probs(target, x[n_candidates:]) if len(x) > n_candidates else None
        rows: dict[int, torch.Tensor] = {}
        half = max(1, self.query_batch // 2)
        members, nonmembers = np.arange(n_members), np.arange(n_members, n_candidates)
        try:
            for start in range(0, max(len(members), len(nonmembers)), half):
                idx = np.concatenate([members[start:start + half], nonmembers[start:start + half]])
                for i, row in zip(idx, target_log_probs(target, x[idx]), strict=True):
                    rows[int(i)] = row
        except BudgetSpent as exc:
            self.stopped_ = exc
        self.queried_ = np.zeros(n_candidates, dtype=bool)
        self.queried_[list(rows)] = True
        if not rows:
            raise self.stopped_ or BudgetSpent("no candidate was queried")
        width = next(iter(rows.values())).shape[-1]
        out = torch.full((n_candidates, width), float("nan"), dtype=next(iter(rows.values())).dtype)
        for i, row in rows.items():
            out[i] = row
        return out if head is None else torch.cat([out, head.to(out.device, out.dtype)])

    def spec(self, target: Target) -> ReferenceSpec:
        return ReferenceSpec.for_target(target, self.arch, self.epochs, self.batch_size, self.lr, self.optimizer,
                                        self.weight_decay)

    def reference_pool(self, data: MembershipData, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, population index or -1) of the pool records: twice the target's training-set size (by default
        the number of members given), so that each reference model trains on as many records as the target."""
        size, pop = 2 * (self.train_size or data.n_members), data.population
        if self.mode == "online":
            n = len(data.x)
            extra = 0 if pop is None else max(0, min(len(pop), size - n))
            idx = rng.permutation(len(pop))[:extra] if extra else np.zeros(0, dtype=np.int64)
            xs = np.concatenate([data.x, pop.x[idx]]) if extra else data.x
            ys = np.concatenate([data.y, pop.y[idx]]) if extra else data.y
            return xs, ys, np.concatenate([np.full(n, -1), idx])
        idx = rng.permutation(len(pop))[:size]
        return pop.x[idx], pop.y[idx], idx

    def train_references(self, target: Target, data: MembershipData,
                         x_eval: np.ndarray | None = None) -> ReferenceRun:
        """Train the reference models and evaluate them on `x_eval` (default: the pool itself)."""
        rng = np.random.default_rng(self.seed)
        pool_x, pool_y, source = self.reference_pool(data, rng)
        masks = balanced_masks(len(pool_x), max(self.n_reference, 2), rng)[: self.n_reference]
        x_eval = pool_x if x_eval is None else x_eval
        log_probs = train_references(self.spec(target), pool_x, pool_y, masks, x_eval, self.seed, self.n_jobs)
        return ReferenceRun(masks, pool_x, pool_y, source, log_probs)
