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

from .base import MembershipData, logit_confidence
from .reference_attack import ReferenceAttack, reference_fit


def _moments(phi: torch.Tensor, mask: torch.Tensor, fixed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-record mean and standard deviation of phi (n_models, n) over the rows where mask is set."""
    w = mask.double()
    count = w.sum(0)
    if (count == 0).any():
        raise ParameterError("some records have no IN or no OUT reference model: use more reference models")
    mean = (phi * w).sum(0) / count
    sq = ((phi - mean) ** 2 * w)
    pooled = sq.sum() / (count.sum() - len(count)).clamp_min(1.0)
    per_record = torch.where(count > 1, sq.sum(0) / (count - 1).clamp_min(1.0), pooled)
    var = pooled.expand_as(mean) if fixed else per_record
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


@register("attacks", "lira", family="privacy")
class LiRA(ReferenceAttack):
    """Likelihood-ratio attack (Carlini et al. 2022): online, offline, per-record or fixed variance.

    `fixed_variance=None` picks a shared variance when there are fewer than 64 reference models, as the paper
    recommends.

    Example:
        >>> from bastion.attacks.privacy.lira import LiRA
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> members = load_dataset("members.npz")
        >>> nonmembers = load_dataset("nonmembers.npz")
        >>> population = load_dataset("population.npz")
        >>> result = LiRA().run(target, data, members=members, nonmembers=nonmembers, population=population)
        >>> from bastion.families import judged  # the threat family judges what the run measured
        >>> judged(result).findings
    """

    name = "lira"

    def __init__(self, arch: str | Callable[[], nn.Module] | None = None, *, n_reference: int = 8,
                 mode: str = "online", fixed_variance: bool | None = None, epochs: int = 20, batch_size: int = 64,
                 lr: float = 1e-3, optimizer: str = "adam", weight_decay: float = 0.0, n_jobs: int | None = None,
                 train_size: int | None = None, n_bootstrap: int = 200, seed: int = 0):
        super().__init__(arch, n_reference=n_reference, mode=mode, epochs=epochs, batch_size=batch_size, lr=lr,
                         optimizer=optimizer, weight_decay=weight_decay, n_jobs=n_jobs,
                         train_size=train_size, n_bootstrap=n_bootstrap, seed=seed)
        self.fixed_variance = fixed_variance
        if self.n_reference < (4 if mode == "online" else 2):
            raise ParameterError("LiRA needs at least 2 OUT (and online, 2 IN) reference models per record to "
                                 "estimate a variance: use n_reference >= 4 online, >= 2 offline")

    def score(self, target: Target, data: MembershipData) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        y = torch.as_tensor(data.y)
        refs = self.train_references(target, data, data.x)  # before the target's queries: a stop keeps them
        phi_target = logit_confidence(self.query_target(target, data.x, len(data.x), data.n_members).cpu().double(),
                                      y)
        in_mask = refs.candidates_in(len(data.x))
        phi_ref = logit_confidence(torch.from_numpy(refs.log_probs).double(), y)
        fixed = self.fixed_variance if self.fixed_variance is not None else self.n_reference < 64
        scores = lira_scores(phi_target, phi_ref, torch.from_numpy(in_mask), self.mode == "online", fixed)
        scores = scores.numpy()
        extra = {"mode": self.mode, "fixed_variance": fixed, "n_reference": self.n_reference,
                 "reference_train_size": refs.train_size, **reference_fit(refs.log_probs, data.y, in_mask)}
        return scores[: data.n_members], scores[data.n_members:], extra
