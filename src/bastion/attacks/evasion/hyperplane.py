"""Minimal-norm steps onto a hyperplane inside a box, the projection FAB needs (Croce & Hein, ICML 2020, §3.1).

For each row: minimise ‖δ‖_p subject to ⟨w, δ⟩ = c and lo ≤ δ ≤ hi (lo ≤ 0 ≤ hi). The problems are solved
exactly, batched, with one sort per row:

- L∞ and L2: δ_i = sign(w_i)·a_i·min(t, s_i) for one t ≥ 0 per row, with a_i = 1 (L∞) or |w_i| (L2) and s_i the
  value of t at which coordinate i reaches its bound; ⟨w, δ⟩ = Σ|w_i|a_i·min(t, s_i) is piecewise linear and
  non-decreasing in t, so t follows from the sorted breakpoints;
- L1: a greedy fill of the coordinates in decreasing |w_i| up to their bounds (a fractional knapsack).

When the hyperplane cannot be reached inside the box, every coordinate goes to the bound that helps most.
"""

from __future__ import annotations

import torch


def _caps(w: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """How far each coordinate can move in the direction of sign(w) (≥ 0)."""
    return torch.where(w > 0, hi, -lo).clamp_min(0)


def _solve_minimum(weight: torch.Tensor, limit: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per row, the smallest t ≥ 0 with Σ_i weight_i·min(t, limit_i) = c (weight ≥ 0); +inf where unreachable."""
    lim, order = limit.sort(dim=1)
    wt = weight.gather(1, order)
    prefix = (wt * lim).cumsum(dim=1)  # Σ_{j≤k} w_j·l_j
    rest = wt.sum(dim=1, keepdim=True) - wt.cumsum(dim=1)  # Σ_{j>k} w_j
    reach = prefix + lim * rest  # g(l_k): value of the sum at each breakpoint
    k = torch.searchsorted(reach.contiguous(), c[:, None].contiguous()).squeeze(1)  # first breakpoint ≥ c
    km = (k - 1).clamp_min(0)
    before = torch.where(k > 0, prefix.gather(1, km[:, None]).squeeze(1), torch.zeros_like(c))
    slope = torch.where(k > 0, rest.gather(1, km[:, None]).squeeze(1), wt.sum(dim=1))
    t = (c - before) / slope.clamp_min(1e-30)
    feasible = k < lim.shape[1]
    return torch.where(feasible, t, torch.full_like(t, float("inf")))


def project_hyperplane_box(w: torch.Tensor, c: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                           norm: str) -> torch.Tensor:
    """δ of minimal Lp norm with ⟨w, δ⟩ = c and lo ≤ δ ≤ hi, per row; w, lo, hi: (n, d), c: (n,)."""
    sign = torch.where(c < 0, -1.0, 1.0).to(w.dtype)
    w = w * sign[:, None]  # solve for ⟨w', δ⟩ = |c| ≥ 0
    c = c.abs()
    caps = _caps(w, lo, hi)
    aw = w.abs()
    direction = w.sign()
    if norm == "l1":
        return _l1(aw, direction, caps, c)
    if norm == "linf":
        weight, limit, scale = aw, caps, torch.ones_like(aw)
    else:
        limit = torch.where(aw > 0, caps / aw.clamp_min(1e-30), torch.zeros_like(aw))
        weight, scale = aw * aw, aw
    t = _solve_minimum(weight, limit, c)
    return direction * scale * torch.minimum(t[:, None], limit)


def _l1(aw: torch.Tensor, direction: torch.Tensor, caps: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Fill coordinates in decreasing |w| up to their cap until ⟨|w|, δ⟩ = c."""
    aw_sorted, order = aw.sort(dim=1, descending=True)
    cap_sorted = caps.gather(1, order)
    gain = aw_sorted * cap_sorted
    before = gain.cumsum(dim=1) - gain  # progress made by the coordinates before each one
    amount = ((c[:, None] - before) / aw_sorted.clamp_min(1e-30)).clamp(min=0)
    amount = torch.minimum(amount, cap_sorted) * (aw_sorted > 0)
    delta = torch.zeros_like(aw).scatter(1, order, amount)
    return direction * delta
