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

from . import checkpoints
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
    # state of one `score` call (reset by `scored`): the stop, the candidates answered, a loaded checkpoint
    queried_: np.ndarray | None = None
    stopped_: BudgetSpent | None = None
    resumed_: dict[str, np.ndarray] | None = None
    references_: ReferenceRun | None = None
    digest_: str | None = None
    checkpoint_: Any = None

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
        self.resumed_: dict[str, np.ndarray] | None = None
        self.references_: ReferenceRun | None = None
        self.digest_: str | None = None
        self.checkpoint_: Any = None
        scores_m, scores_n, extra = self.score(target, data)
        if self.resumed_ is not None:
            extra = {**extra, "resumed_from_checkpoint": True}
        if self.stopped_ is None or self.queried_ is None:
            return scores_m, scores_n, extra, ""
        got_m, got_n = self.queried_[: data.n_members], self.queried_[data.n_members:]
        if not got_m.any() or not got_n.any():
            raise self.stopped_
        reason = (f"{self.stopped_}: {int(got_m.sum())} of {len(got_m)} members and {int(got_n.sum())} of "
                  f"{len(got_n)} non-members scored against {self.n_reference} trained reference models")
        if self.checkpoint_ is not None:
            reason += " (kept for --resume)"
        return scores_m[got_m], scores_n[got_n], extra, reason

    def query_target(self, target: Target, x: np.ndarray, n_candidates: int, n_members: int) -> torch.Tensor:
        """The target's log-probabilities on `x` (the candidates, members first, then any other records the
        attack needs). Under a budget or deadline, or when resuming: the other records first, then the candidates
        in balanced chunks (those a checkpoint holds are not asked again); a stop leaves NaN rows for the
        candidates not answered (`queried_` marks the others) and writes a checkpoint for `--resume`."""
        saved = self.resumed_
        if not target.counter.limited and saved is None:
            return target_log_probs(target, x)
        if saved is not None and "head" in saved:
            head: torch.Tensor | None = torch.from_numpy(saved["head"])
        else:
            head = target_log_probs(target, x[n_candidates:]).cpu() if len(x) > n_candidates else None
        rows: dict[int, torch.Tensor] = {}
        if saved is not None:
            rows = {int(i): torch.from_numpy(saved["rows"][i]) for i in np.nonzero(saved["queried"])[0]}
        half = max(1, self.query_batch // 2)
        members, nonmembers = np.arange(n_members), np.arange(n_members, n_candidates)
        try:
            for start in range(0, max(len(members), len(nonmembers)), half):
                idx = np.concatenate([members[start:start + half], nonmembers[start:start + half]])
                idx = idx[[int(i) not in rows for i in idx]]
                if len(idx):
                    for i, row in zip(idx, target_log_probs(target, x[idx]).cpu(), strict=True):
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
        self.checkpoint(out, head)
        return out if head is None else torch.cat([out, head.to(out.device, out.dtype)])

    def checkpoint(self, rows: torch.Tensor, head: torch.Tensor | None) -> None:
        """After the target's queries: keep the reference models and the answers when a stop left candidates
        unscored (`checkpoints`), forget them when every candidate was answered."""
        digest, refs = self.digest_, self.references_
        if digest is None or refs is None:
            return
        if self.stopped_ is None:
            checkpoints.discard(self.name, digest)
            return
        arrays = {"masks": refs.masks, "pool_x": refs.pool_x, "pool_y": refs.pool_y, "pool_source": refs.pool_source,
                  "log_probs": refs.log_probs, "rows": rows.numpy(), "queried": self.queried_}
        if head is not None:
            arrays["head"] = head.numpy()
        self.checkpoint_ = checkpoints.save(self.name, digest, arrays)

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
        """Train the reference models and evaluate them on `x_eval` (default: the pool itself); when a checkpoint
        of this very job exists (`checkpoints`: same parameters, seed, target and records), load them instead."""
        pop = data.population
        self.digest_ = None if checkpoints.folder() is None else checkpoints.job_digest(
            self.name, self.get_params(), target.name, target.n_classes,
            [data.x, data.y, None if pop is None else pop.x, None if pop is None else pop.y, x_eval])
        saved = None if self.digest_ is None else checkpoints.load(self.name, self.digest_)
        if saved is not None:
            self.resumed_ = saved
            self.references_ = ReferenceRun(saved["masks"], saved["pool_x"], saved["pool_y"], saved["pool_source"],
                                            saved["log_probs"])
            return self.references_
        rng = np.random.default_rng(self.seed)
        pool_x, pool_y, source = self.reference_pool(data, rng)
        masks = balanced_masks(len(pool_x), max(self.n_reference, 2), rng)[: self.n_reference]
        x_eval = pool_x if x_eval is None else x_eval
        log_probs = train_references(self.spec(target), pool_x, pool_y, masks, x_eval, self.seed, self.n_jobs)
        self.references_ = ReferenceRun(masks, pool_x, pool_y, source, log_probs)
        return self.references_
