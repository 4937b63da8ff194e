"""Likelihood-ratio attack, LiRA (Carlini et al., 2022, "Membership Inference Attacks From First Principles",
IEEE S&P).

Reference models are trained like the target on random halves of a pool. For each candidate record the
logit-scaled confidence phi = log(p_y / (1 - p_y)) is roughly Gaussian across models that did (IN) and did not
(OUT) train on it. Online LiRA scores log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out), where the pool holds the
candidates themselves so each is IN for exactly half of the models; offline LiRA trains on the population only
and scores the one-sided test (phi - mu_out) / s_out. With few reference models, a variance shared by all records
(fixed variance) is more reliable than per-record estimates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import Target

from .base import MembershipAttack, MembershipData, check_int, logit_confidence, target_log_probs
from .references import ReferenceSpec, balanced_masks, train_references


def _moments(phi: torch.Tensor, mask: torch.Tensor, fixed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-record mean and standard deviation of phi (n_models, n) over the rows where mask is set."""
    w = mask.double()
    count = w.sum(0)
    if (count == 0).any():
        raise ParameterError("some records have no IN or no OUT reference model: use more reference models")
    mean = (phi * w).sum(0) / count
    sq = ((phi - mean) ** 2 * w)
    pooled = sq.sum() / (count.sum() - len(count)).clamp_min(1.0)
    if fixed:
        var = pooled.expand_as(mean)
    else:
        var = torch.where(count > 1, sq.sum(0) / (count - 1).clamp_min(1.0), pooled)
    return mean, var.clamp_min(1e-8).sqrt()


def _normal_logpdf(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((x - mean) / std) ** 2 - std.log()


def lira_scores(phi_target: torch.Tensor, phi_ref: torch.Tensor, in_mask: torch.Tensor, online: bool,
                fixed_variance: bool) -> torch.Tensor:
    """LiRA membership scores (n,) from the target's phi (n,) and reference phis (n_models, n)."""
    phi_target, phi_ref = phi_target.double(), phi_ref.double()
    mu_out, sd_out = _moments(phi_ref, ~in_mask, fixed_variance)
    if not online:
        return (phi_target - mu_out) / sd_out
    mu_in, sd_in = _moments(phi_ref, in_mask, fixed_variance)
    return _normal_logpdf(phi_target, mu_in, sd_in) - _normal_logpdf(phi_target, mu_out, sd_out)


def reference_fit(log_probs: np.ndarray, y: np.ndarray, in_mask: np.ndarray) -> dict[str, float]:
    """Accuracy of the reference models on records they trained on and on the others (a sanity check)."""
    correct = log_probs.argmax(-1) == y[None]
    train = float(correct[in_mask].mean()) if in_mask.any() else float("nan")
    return {"reference_train_accuracy": train, "reference_test_accuracy": float(correct[~in_mask].mean())}


class ReferenceAttack(MembershipAttack):
    """Shared parameters of attacks that train reference models through the Trainer."""

    def __init__(self, arch: str | Callable[[], nn.Module] | None = None, n_reference: int = 8,
                 mode: str = "online", epochs: int = 20, batch_size: int = 64, lr: float = 1e-3,
                 optimizer: str = "adam", weight_decay: float = 0.0, n_jobs: int | None = None,
                 n_bootstrap: int = 200, seed: int = 0):
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
        if self.lr <= 0 or self.weight_decay < 0:
            raise ParameterError("lr must be positive and weight_decay non-negative")

    @property
    def needs_population(self) -> bool:  # type: ignore[override]
        return self.mode == "offline"

    def spec(self, target: Target) -> ReferenceSpec:
        return ReferenceSpec.for_target(target, self.arch, self.epochs, self.batch_size, self.lr, self.optimizer,
                                        self.weight_decay)

    def reference_pool(self, data: MembershipData, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Online: the candidates plus population records up to twice the member count (so that half the pool
        matches the target's training size). Offline: a random part of the population of that size."""
        target_size = 2 * data.n_members
        pop = data.population
        if self.mode == "online":
            extra = 0 if pop is None else max(0, min(len(pop), target_size - len(data.x)))
            idx = rng.permutation(len(pop))[:extra] if extra else np.zeros(0, dtype=np.int64)
            xs = data.x if not extra else np.concatenate([data.x, pop.x[idx]])
            ys = data.y if not extra else np.concatenate([data.y, pop.y[idx]])
            return xs, ys
        idx = rng.permutation(len(pop))[:target_size]
        return pop.x[idx], pop.y[idx]

    def reference_signals(self, target: Target, data: MembershipData, x_eval: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Train the reference models; return (pool masks, pool x, pool y, log-probs on x_eval)."""
        rng = np.random.default_rng(self.seed)
        pool_x, pool_y = self.reference_pool(data, rng)
        n_models = self.n_reference if self.mode == "online" else max(self.n_reference, 2)
        masks = balanced_masks(len(pool_x), n_models, rng)
        if self.mode == "offline" and self.n_reference == 1:
            masks = masks[:1]
        log_probs = train_references(self.spec(target), pool_x, pool_y, masks, x_eval, self.seed, self.n_jobs)
        return masks, pool_x, pool_y, log_probs


@register("attacks", "lira", family="inference")
class LiRA(ReferenceAttack):
    """Likelihood-ratio attack (Carlini et al. 2022): online, offline, per-record or fixed variance.

    `fixed_variance=None` picks a shared variance when there are fewer than 64 reference models, as the paper
    recommends."""

    name = "lira"

    def __init__(self, arch: str | Callable[[], nn.Module] | None = None, n_reference: int = 8,
                 mode: str = "online", fixed_variance: bool | None = None, epochs: int = 20, batch_size: int = 64,
                 lr: float = 1e-3, optimizer: str = "adam", weight_decay: float = 0.0, n_jobs: int | None = None,
                 n_bootstrap: int = 200, seed: int = 0):
        super().__init__(arch, n_reference, mode, epochs, batch_size, lr, optimizer, weight_decay, n_jobs,
                         n_bootstrap, seed)
        self.fixed_variance = fixed_variance
        if fixed_variance is False and self.n_reference < (4 if mode == "online" else 2):
            raise ParameterError("per-record variances need at least 2 IN and 2 OUT models: raise n_reference "
                                 "or use fixed_variance")

    def score(self, target: Target, data: MembershipData) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        y = torch.as_tensor(data.y)
        phi_target = logit_confidence(target_log_probs(target, data.x).cpu().double(), y)
        masks, _, _, log_probs = self.reference_signals(target, data, data.x)
        n = len(data.x)
        in_mask = masks[:, :n] if self.mode == "online" else np.zeros((len(masks), n), dtype=bool)
        phi_ref = logit_confidence(torch.from_numpy(log_probs).double(), y)
        fixed = self.fixed_variance if self.fixed_variance is not None else len(masks) < 64
        scores = lira_scores(phi_target, phi_ref, torch.from_numpy(in_mask), self.mode == "online", fixed)
        scores = scores.numpy()
        extra = {"mode": self.mode, "fixed_variance": fixed, "n_reference": len(masks),
                 **reference_fit(log_probs, data.y, in_mask)}
        return scores[: data.n_members], scores[data.n_members:], extra
