"""Shared machinery of fixed-epsilon evasion attacks.

`EvasionAttack.run` evaluates a target at several epsilons in one call: epsilons are visited in increasing
order and only samples still robust at the previous epsilon are attacked again (an adversarial example inside a
smaller ball is inside every larger one). Subclasses implement `perturb(target, x, y, eps)` for one epsilon.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from bastion.attacks.base import Attack
from bastion.attacks.evasion.norms import check_norm, lp_norm
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.results import AttackResult
from bastion.core.target import Access, Target
from bastion.evaluation.scoring import evasion_findings


def parse_eps(eps: float | str | Sequence[float]) -> list[float]:
    """Accept 0.1, "0.05,0.1" or [0.05, 0.1]; return a sorted list of positive floats."""
    if isinstance(eps, str):
        eps = [float(e) for e in eps.split(",") if e.strip()]
    elif isinstance(eps, (int, float)):
        eps = [float(eps)]
    values = sorted(float(e) for e in eps)
    if not values or any(not np.isfinite(e) or e <= 0 for e in values):
        raise ParameterError(f"epsilons must be positive and finite, got {eps}")
    return values


class EvasionAttack(Attack):
    """Base of fixed-epsilon attacks. `max_eps_fraction` refuses epsilons that exceed the input range."""

    family: ClassVar[str] = "evasion"
    requires: ClassVar[Access] = Access.GRADIENTS
    max_eps_fraction: ClassVar[dict[str, float]] = {"linf": 1.0, "l2": float("inf"), "l1": float("inf")}

    def __init__(self, eps: float | str | Sequence[float] = 8 / 255, norm: str = "linf", seed: int = 0):
        self.eps = parse_eps(eps)
        self.norm = check_norm(norm)
        self.seed = int(seed)

    def validate_eps(self, target: Target) -> None:
        """Refuse an epsilon that covers the whole input range: the result would mean nothing."""
        lo, hi = target.bounds
        limit = self.max_eps_fraction[self.norm] * (hi - lo)
        if self.norm == "linf" and max(self.eps) >= limit:
            raise ParameterError(
                f"eps {max(self.eps):g} is at least the whole input range {hi - lo:g}: every input is reachable"
            )
        dim = int(np.prod(target.input_shape))
        full = (hi - lo) * (dim ** 0.5 if self.norm == "l2" else dim if self.norm == "l1" else 1)
        if max(self.eps) >= full:
            raise ParameterError(f"eps {max(self.eps):g} ({self.norm}) spans the whole input space ({full:g})")

    def perturb(self, target: Target, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """Adversarial versions of x within `eps` (the best iterate per sample)."""
        raise NotImplementedError  # pragma: no cover

    def generator(self, device: torch.device | None = None) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def run(self, target: Target, data: Dataset, **_: Any) -> AttackResult:
        self.check_access(target)
        self.validate_eps(target)
        start, queries_before = time.perf_counter(), target.queries
        x = torch.as_tensor(data.x, dtype=torch.float32, device=target.device)
        y = torch.as_tensor(data.y, dtype=torch.long, device=target.device)
        robust = target.labels(x) == y
        clean_accuracy = robust.float().mean()
        curve, violations = [], 0
        for eps in self.eps:
            idx = robust.nonzero().flatten()
            if len(idx):
                x_adv = self.perturb(target, x[idx], y[idx], eps)
                valid = valid_examples(x[idx], x_adv, eps, self.norm, target.bounds)
                violations += int((~valid).sum())
                fooled = (target.labels(x_adv.float()) != y[idx]) & valid
                robust[idx[fooled]] = False
            curve.append({"eps": eps, "robust_accuracy": float(robust.float().mean())})
        clean = float(clean_accuracy)
        metrics = {
            "clean_accuracy": clean,
            "robust_accuracy": curve,
            "attack_success_rate": [
                {"eps": c["eps"], "rate": (1 - c["robust_accuracy"] / clean) if clean > 0 else 0.0} for c in curve
            ],
            "n_samples": len(data),
            "norm": self.norm,
            "constraint_violations": violations,
        }
        return AttackResult(
            family=self.family,
            attack=self.name,
            params=self.get_params(),
            metrics=metrics,
            queries=target.queries - queries_before,
            seconds=time.perf_counter() - start,
            device=str(target.device),
            findings=evasion_findings(self.name, self.norm, clean, curve, violations),
        )


def valid_examples(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str,
                   bounds: tuple[float, float], rtol: float = 1e-5) -> torch.Tensor:
    """Mask of adversarial examples that are finite, inside the bounds and within eps (checked in float32).

    An invalid example never counts as a success: a bug in an attack cannot make a model look weaker."""
    x, x_adv = x.float(), x_adv.float()
    finite = torch.isfinite(x_adv.reshape(len(x_adv), -1)).all(dim=1)
    flat = x_adv.reshape(len(x_adv), -1)
    inside = (flat >= bounds[0] - 1e-6).all(dim=1) & (flat <= bounds[1] + 1e-6).all(dim=1)
    within = lp_norm(x_adv - x, norm) <= eps * (1 + rtol) + 1e-7
    return finite & inside & within
