"""Critical points and weight directions of a one-hidden-layer ReLU network, for `fee` (Jagielski, Carlini,
Berthelot, Kurakin & Papernot, "High Accuracy and High Fidelity Extraction of Neural Networks", USENIX Security
2020, Section 5).

Along a line x(t) = u + t·v the network's output is piecewise linear in t, with a kink wherever one hidden unit
changes sign. `find_kinks` queries a grid of `segments` + 1 points on each line and flags grid points whose second
difference is not zero (up to `tol` times the line's output scale): a run of flagged points holds one or more
kinks, and the linear pieces on either side are known from the unflagged neighbours. The kink is where the two
pieces intersect; one query checks it (the answer there must lie on both pieces). A region that fails the check
holds several kinks: it is split at its middle, where two more queries give the local piece, and each half is
searched again, for up to `depth` rounds. Every round is one batched query over all lines.

`gradient_jumps` estimates the gradient on both sides of each critical point by forward differences (d + 1
queries a side): their difference is a_j·w_jᵀ (up to the sign of w_j), a rank-one K × d matrix whose singular
vectors give the unit's output column a_j and weight direction w_j.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class OutOfQueries(Exception):
    """The probe refuses a batch that would overrun the search's share of the budget."""


Probe = Callable[[torch.Tensor], torch.Tensor]  # (n, d) float64 -> (n, K) float64, piecewise linear in x


@dataclass
class Kinks:
    """Critical points found on a set of lines: position, line, and how far each side is known to be linear."""

    x: torch.Tensor  # (n, d)
    line: torch.Tensor  # (n,)
    left: torch.Tensor  # (n,) distance along v to the start of the linear piece on the left
    right: torch.Tensor  # (n,)


def line_ends(u: torch.Tensor, v: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Parameters t0 < t1 where the lines u + t·v enter and leave the box [low, high]."""
    safe = torch.where(v.abs() < 1e-12, torch.full_like(v, 1e-12), v)
    ta, tb = (low - u) / safe, (high - u) / safe
    return torch.minimum(ta, tb).amax(dim=1), torch.maximum(ta, tb).amin(dim=1)


def find_kinks(probe: Probe, u: torch.Tensor, v: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor,
               segments: int, tol: float, depth: int = 8) -> Kinks:
    """Critical points on the lines u + t·v, t in [t0, t1] (v of unit norm)."""
    n, d = u.shape
    g = segments
    steps = torch.linspace(0, 1, g + 1, dtype=u.dtype, device=u.device)
    grid = t0[:, None] + (t1 - t0)[:, None] * steps  # (n, g + 1)
    f = probe((u[:, None] + grid[..., None] * v[:, None]).reshape(-1, d)).reshape(n, g + 1, -1)
    thr = tol * f.abs().amax(dim=(1, 2)).clamp_min(1e-30)  # per line
    second = f[:, :-2] - 2 * f[:, 1:-1] + f[:, 2:]  # at grid points 1 .. g - 1
    bent = second.abs().amax(dim=-1) > thr[:, None]
    starts = (bent & ~F.pad(bent[:, :-1], (1, 0))).nonzero()
    ends = (bent & ~F.pad(bent[:, 1:], (0, 1))).nonzero()
    keep = (starts[:, 1] >= 1) & (ends[:, 1] <= g - 3)  # both neighbouring pieces must lie on the grid
    line, r1, r2 = starts[keep, 0], starts[keep, 1], ends[keep, 1] + 2  # last and next unbent grid points
    h = ((t1 - t0) / g)[line]
    a, b = grid[line, r1 + 1], grid[line, r2 - 1]
    fa, fb = f[line, r1 + 1], f[line, r2 - 1]
    s_left = (f[line, r1 + 1] - f[line, r1 - 1]) / (2 * h[:, None])
    s_right = (f[line, r2 + 1] - f[line, r2 - 1]) / (2 * h[:, None])
    lo, hi = grid[line, r1 - 1], grid[line, r2 + 1]  # where the left piece starts, the right piece ends
    found: list[tuple[torch.Tensor, ...]] = []
    for _ in range(depth):
        try:
            done, (line, a, b, fa, fb, s_left, s_right, lo, hi) = refine(
                probe, u, v, thr, line, a, b, fa, fb, s_left, s_right, lo, hi)
        except OutOfQueries:  # keep what earlier rounds found
            break
        found.append(done)
        if len(line) == 0:
            break
    if not found:
        empty = u.new_zeros(0)
        return Kinks(u.new_zeros(0, d), torch.zeros(0, dtype=torch.long, device=u.device), empty, empty)
    line, t, lo, hi = (torch.cat(z) for z in zip(*found, strict=True))
    return Kinks(u[line] + t[:, None] * v[line], line, t - lo, hi - t)


def refine(probe: Probe, u: torch.Tensor, v: torch.Tensor, thr: torch.Tensor,
           *regions: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """One round over the kinked regions: the kinks found (line, t, lo, hi) and the regions left to split."""
    line, a, b, fa, fb, s_left, s_right, lo, hi = regions
    tl = thr[line]
    kinked = (fb - fa - s_left * (b - a)[:, None]).abs().amax(dim=-1) > tl  # else [a, b] is one piece
    line, a, b, fa, fb, s_left, s_right, lo, hi, tl = (
        z[kinked] for z in (line, a, b, fa, fb, s_left, s_right, lo, hi, tl))
    jump = s_left - s_right
    t = (jump * (fb - fa + s_left * a[:, None] - s_right * b[:, None])).sum(-1) / jump.square().sum(-1)
    t = torch.where(torch.isfinite(t), t, (a + b) / 2).clamp(a, b)
    ft = probe(u[line] + t[:, None] * v[line])
    on_left = (ft - fa - s_left * (t - a)[:, None]).abs().amax(dim=-1) <= tl / 4
    on_right = (ft - fb - s_right * (t - b)[:, None]).abs().amax(dim=-1) <= tl / 4
    ok = on_left & on_right & (t > a) & (t < b)
    found = (line[ok], t[ok], lo[ok], hi[ok])
    line, a, b, fa, fb, s_left, s_right, lo, hi, tl = (
        z[~ok] for z in (line, a, b, fa, fb, s_left, s_right, lo, hi, tl))
    # several kinks: split at the middle, where three queries give the local piece (dropped if not straight)
    mid, eta = (a + b) / 2, (b - a) / 8
    try:
        f_lo, f_mid, f_hi = probe(torch.cat([u[line] + (mid + k * eta)[:, None] * v[line]
                                             for k in (-1, 0, 1)])).chunk(3)
    except OutOfQueries:
        return found, tuple(z[:0] for z in (line, a, b, fa, fb, s_left, s_right, lo, hi))
    straight = (f_lo + f_hi - 2 * f_mid).abs().amax(dim=-1) <= tl / 4
    line, a, b, fa, fb, s_left, s_right, lo, hi, mid, eta, f_lo, f_hi = (
        z[straight] for z in (line, a, b, fa, fb, s_left, s_right, lo, hi, mid, eta, f_lo, f_hi))
    s_mid = (f_hi - f_lo) / (2 * eta[:, None])
    regions = (line.repeat(2), torch.cat([a, mid + eta]), torch.cat([mid - eta, b]), torch.cat([fa, f_hi]),
               torch.cat([f_lo, fb]), torch.cat([s_left, s_mid]), torch.cat([s_mid, s_right]),
               torch.cat([lo, mid - eta]), torch.cat([mid + eta, hi]))
    return found, regions


def gradient_jumps(probe: Probe, kinks: Kinks, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per critical point: output column a (K,), weight direction w (d,) oriented along v, and the ratio of the
    second to the first singular value of the gradient jump (near 0 when only one unit switched)."""
    n, d = kinks.x.shape
    direction = v[kinks.line]
    rho_left, rho_right = kinks.left / 2, kinks.right / 2
    step = torch.minimum(rho_left, rho_right) / 4
    eye = torch.eye(d, dtype=kinks.x.dtype, device=kinks.x.device)
    sides = []
    for rho, sign in ((rho_left, -1.0), (rho_right, 1.0)):
        base = kinks.x + sign * rho[:, None] * direction
        sides.append(torch.cat([base[:, None], base[:, None] + step[:, None, None] * eye], dim=1))
    points = torch.cat(sides, dim=1).float().double()  # the points as the float32 API will see them
    out = probe(points.reshape(-1, d)).reshape(n, 2 * d + 2, -1)
    grads = []
    for k in (0, d + 1):
        dx = (points[:, k + 1:k + d + 1] - points[:, k:k + 1]).diagonal(dim1=1, dim2=2)  # (n, d)
        grads.append((out[:, k + 1:k + d + 1] - out[:, k:k + 1]) / dx[..., None])  # (n, d, K)
    jump = (grads[1] - grads[0]).transpose(1, 2)  # (n, K, d)
    u_, s, vh = torch.linalg.svd(jump, full_matrices=False)
    a, w = u_[:, :, 0] * s[:, :1], vh[:, 0]
    flip = torch.where((w * direction).sum(-1) < 0, -1.0, 1.0).to(w.dtype)
    ratio = s[:, 1] / s[:, 0].clamp_min(1e-300) if s.shape[1] > 1 else torch.zeros_like(s[:, 0])
    return a * flip[:, None], w * flip[:, None], ratio
