"""Label-only membership attacks (Choquette-Choo, Tramer, Carlini and Papernot, 2021, "Label-Only Membership
Inference Attacks", ICML; Li and Zhang, 2021, "Membership Leakage in Label-Only Exposures", CCS).

`gap`: a record is a member when the model labels it correctly (the baseline of Yeom et al. 2018).
`boundary`: training records lie farther from the decision boundary. The distance is estimated with labels only,
by a batched binary search of the smallest L2 radius along random directions (clipped to the input bounds) at
which the label changes; the score is the smallest radius found, and 0 for misclassified records.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import Access, Target

from .base import MembershipAttack, MembershipData, check_int


def _search(target: Target, base: torch.Tensor, dirs: torch.Tensor, ys: torch.Tensor, r_max: float,
            steps: int) -> torch.Tensor:
    """Binary search along each row's direction; r_max where even the largest radius keeps the label."""
    lo_b, hi_b = target.bounds
    shape = target.input_shape

    def flips(radius: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        moved = (base[rows] + radius[:, None] * dirs[rows]).clamp(lo_b, hi_b)
        return target.labels(moved.reshape(len(rows), *shape)) != ys[rows]

    hi = torch.full((len(base),), r_max, device=base.device)
    active = flips(hi, torch.arange(len(base), device=base.device)).nonzero().flatten()
    lo, hi_a = torch.zeros(len(active), device=base.device), hi[active]
    for _ in range(steps):
        mid = (lo + hi_a) / 2
        f = flips(mid, active)
        hi_a = torch.where(f, mid, hi_a)
        lo = torch.where(f, lo, mid)
    hi[active] = hi_a
    return hi


def boundary_distance(target: Target, x: torch.Tensor, y: torch.Tensor, n_directions: int, steps: int,
                      generator: torch.Generator, chunk_values: int = 1 << 24) -> torch.Tensor:
    """Smallest radius (n,) along `n_directions` random unit L2 directions at which the label leaves y."""
    lo_b, hi_b = target.bounds
    dim = int(np.prod(x.shape[1:]))
    r_max = (hi_b - lo_b) * math.sqrt(dim)
    per_chunk = max(1, chunk_values // (n_directions * dim))
    out = [torch.zeros(0, device=x.device)]
    for xc, yc in zip(x.split(per_chunk), y.split(per_chunk), strict=True):
        n = len(xc)
        dirs = torch.randn(n * n_directions, dim, generator=generator).to(x.device)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        base = xc.reshape(n, 1, dim).expand(n, n_directions, dim).reshape(-1, dim)
        radius = _search(target, base, dirs, yc.repeat_interleave(n_directions), r_max, steps)
        out.append(radius.reshape(n, n_directions).min(dim=1).values)
    return torch.cat(out)


@register("attacks", "label-only", family="inference")
class LabelOnlyAttack(MembershipAttack):
    """Label-only membership inference: the gap attack or the decision-boundary distance (Choquette-Choo 2021)."""

    name = "label-only"
    requires: ClassVar[Access] = Access.LABELS

    def __init__(self, method: str = "boundary", n_directions: int = 16, search_steps: int = 12,
                 n_bootstrap: int = 200, seed: int = 0):
        super().__init__(n_bootstrap=n_bootstrap, seed=seed)
        if method not in ("boundary", "gap"):
            raise ParameterError(f"method must be boundary or gap, got {method!r}")
        self.method = method
        self.n_directions = check_int(n_directions, "n_directions", 1)
        self.search_steps = check_int(search_steps, "search_steps", 1)

    def score(self, target: Target, data: MembershipData) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        x = torch.as_tensor(data.x, device=target.device)
        y = torch.as_tensor(data.y, device=target.device)
        correct = target.labels(x) == y
        scores = correct.double()
        if self.method == "boundary":
            idx = correct.nonzero().flatten()
            g = torch.Generator().manual_seed(self.seed)
            dist = boundary_distance(target, x[idx], y[idx], self.n_directions, self.search_steps, g)
            scores = torch.zeros(len(x), dtype=torch.float64, device=target.device)
            scores[idx] = dist.double()
        scores = scores.cpu().numpy()
        m = data.n_members
        extra = {"method": self.method, "member_accuracy": float(correct[:m].float().mean()),
                 "nonmember_accuracy": float(correct[m:].float().mean())}
        return scores[:m], scores[m:], extra
