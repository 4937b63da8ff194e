"""Robust membership inference attack, RMIA (Zarifzadeh, Liu, Mukherjee and Shokri, 2024, "Low-Cost High-Power
Membership Inference Attacks", ICML).

For a candidate x and population records z, RMIA compares the likelihood ratios Pr(x|target) / Pr(x) and
Pr(z|target) / Pr(z), where Pr(.) averages the reference models' probability of the true label. The score of x is
the fraction of z it dominates by a factor gamma. Online, Pr(x) averages models that did and did not train on x;
offline (no model trained on x), Pr(x) = ((1 + a) Pr_out(x) + (1 - a)) / 2 corrects for the missing IN models,
which lets RMIA work with one or two reference models.

With one shared population sample the score is monotone in the ratio of x, so records with equal counts are
ordered by their ratio (the limit of an infinite population sample).
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

from .base import MembershipData, check_int, true_log_prob
from .reference_attack import ReferenceAttack, reference_fit


def rmia_scores(log_ratio_x: np.ndarray, log_ratio_z: np.ndarray, gamma: float) -> np.ndarray:
    """Share of z with ratio_x / ratio_z >= gamma, as (count + t) / (|Z| + 1) in [0, 1), where t in [0, 1) is
    the rank of x's own ratio among the candidates (it orders records of equal count)."""
    z = np.sort(log_ratio_z)
    count = np.searchsorted(z, log_ratio_x - np.log(gamma), side="right")
    rank = np.argsort(np.argsort(log_ratio_x, kind="stable"), kind="stable") / len(log_ratio_x)
    return (count + rank) / (len(z) + 1)


def marginal(probs: np.ndarray, out_mask: np.ndarray, online: bool, a: float) -> np.ndarray:
    """Pr(x) from reference probabilities (n_models, n): mean of all models online, offline-corrected OUT mean."""
    if online:
        return probs.mean(0)
    count = out_mask.sum(0)
    mean_out = np.where(count > 0, (probs * out_mask).sum(0) / np.maximum(count, 1), np.nan)
    return 0.5 * ((1 + a) * mean_out + (1 - a))


@register("attacks", "rmia", family="privacy")
class RMIA(ReferenceAttack):
    """RMIA (Zarifzadeh et al. 2024): pairwise likelihood ratios against population records; 1-2 models suffice.

    Example:
        >>> from bastion.attacks.privacy.rmia import RMIA
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> members = load_dataset("members.npz")
        >>> nonmembers = load_dataset("nonmembers.npz")
        >>> population = load_dataset("population.npz")
        >>> result = RMIA().run(target, data, members=members, nonmembers=nonmembers, population=population)
        >>> from bastion.families import judged  # the threat family judges what the run measured
        >>> judged(result).findings
    """

    name = "rmia"

    def __init__(self, arch: str | Callable[[], nn.Module] | None = None, *, n_reference: int = 2,
                 mode: str = "offline", offline_a: float = 0.3, gamma: float = 1.0, n_population: int = 5000,
                 epochs: int = 20, batch_size: int = 64, lr: float = 1e-3, optimizer: str = "adam",
                 weight_decay: float = 0.0, n_jobs: int | None = None, train_size: int | None = None,
                 n_bootstrap: int = 200, seed: int = 0):
        super().__init__(arch, n_reference=n_reference, mode=mode, epochs=epochs, batch_size=batch_size, lr=lr,
                         optimizer=optimizer, weight_decay=weight_decay, n_jobs=n_jobs,
                         train_size=train_size, n_bootstrap=n_bootstrap, seed=seed)
        self.offline_a = float(offline_a)
        self.gamma = float(gamma)
        self.n_population = check_int(n_population, "n_population", 1)
        if not 0.0 <= self.offline_a <= 1.0 or self.gamma <= 0:
            raise ParameterError("offline_a must lie in [0, 1] and gamma must be positive")

    @property
    def needs_population(self) -> bool:  # type: ignore[override]
        return True

    def score(self, target: Target, data: MembershipData) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        pop = data.population
        rng = np.random.default_rng(self.seed + 1)
        z_idx = rng.permutation(len(pop))[: self.n_population]
        zx, zy = pop.x[z_idx], pop.y[z_idx]
        n = len(data.x)
        x_all, y_all = np.concatenate([data.x, zx]), torch.as_tensor(np.concatenate([data.y, zy]))
        refs = self.train_references(target, data, x_all)  # before the target's queries: a stop keeps them
        p_target = true_log_prob(self.query_target(target, x_all, n, data.n_members).cpu().double(),
                                 y_all).exp().numpy()
        p_ref = true_log_prob(torch.from_numpy(refs.log_probs).double(), y_all).exp().numpy()
        in_mask = np.concatenate([refs.candidates_in(n), refs.population_in(z_idx)], axis=1)
        pr = marginal(p_ref, ~in_mask, self.mode == "online", self.offline_a)
        keep_z = np.isfinite(pr[n:])
        if not keep_z.any():
            raise ParameterError("no population record is held out of the reference models: use more of them")
        log_ratio = np.log(np.clip(p_target, 1e-300, None)) - np.log(np.clip(pr, 1e-300, None))
        scores = rmia_scores(log_ratio[:n], log_ratio[n:][keep_z], self.gamma)
        extra = {"mode": self.mode, "n_reference": self.n_reference, "n_population_z": int(keep_z.sum()),
                 "offline_a": self.offline_a, "gamma": self.gamma, "reference_train_size": refs.train_size,
                 **reference_fit(refs.log_probs[:, :n], data.y, in_mask[:, :n])}
        return scores[: data.n_members], scores[data.n_members:], extra
