"""Label-only estimate of the L2 distance from each input to the model's decision boundary.

1. Random directions: a batched binary search of the smallest radius along random unit directions (clipped to
   the input bounds) at which the label changes; the closest such point starts step 2.
2. HopSkipJump refinement (Chen, Jordan and Wainwright, 2020, "HopSkipJumpAttack: A Query-Efficient
   Decision-Based Attack", IEEE S&P): at the boundary point, estimate the boundary's normal from the labels of
   random probes, step along it (halving the step until the point stays misclassified), and binary-search back
   towards the input; the distance shrinks with each iteration.
Everything is batched over inputs; only labels are queried.
"""

from __future__ import annotations

import math

import torch

from bastion.core.target import Target


def _flat_labels(target: Target, x: torch.Tensor) -> torch.Tensor:
    return target.labels(x.reshape(len(x), *target.input_shape))


def line_search(target: Target, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    """The point nearest x on each segment [x, x_adv] that is still misclassified (to 2^-steps of its length)."""
    lo = torch.zeros(len(x), device=x.device)
    hi = torch.ones(len(x), device=x.device)
    for _ in range(steps):
        mid = (lo + hi) / 2
        adv = _flat_labels(target, x + mid[:, None] * (x_adv - x)) != y
        hi, lo = torch.where(adv, mid, hi), torch.where(adv, lo, mid)
    return x + hi[:, None] * (x_adv - x)


def random_direction_start(target: Target, x: torch.Tensor, y: torch.Tensor, n_directions: int, steps: int,
                           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(closest misclassified point found along random directions, whether one was found), x flat (n, d)."""
    lo_b, hi_b = target.bounds
    n, dim = x.shape
    r_max = (hi_b - lo_b) * math.sqrt(dim)
    dirs = torch.randn(n * n_directions, dim, generator=generator).to(x.device)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    base = x.repeat_interleave(n_directions, 0)
    ys = y.repeat_interleave(n_directions)
    far = (base + r_max * dirs).clamp(lo_b, hi_b)
    found = _flat_labels(target, far) != ys
    radius = torch.full((len(base),), float("inf"), device=x.device)
    if found.any():
        idx = found.nonzero().flatten()
        point = line_search(target, base[idx], far[idx], ys[idx], steps)
        radius[idx] = (point - base[idx]).norm(dim=1)
        far[idx] = point
    radius = radius.view(n, n_directions)
    best = radius.argmin(1)
    start = far.view(n, n_directions, dim)[torch.arange(n, device=x.device), best]
    return start, torch.isfinite(radius.min(1).values)


def hopskipjump(target: Target, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, iterations: int,
                n_grad: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """Refine misclassified points x_adv towards x along estimated boundary normals; returns boundary points."""
    lo_b, hi_b = target.bounds
    n, dim = x.shape
    xb = line_search(target, x, x_adv, y, steps)
    for it in range(1, iterations + 1):
        dist = (xb - x).norm(dim=1)
        delta = (dist / dim).clamp_min(1e-6)  # probe radius sqrt(d) * theta * dist with theta = d^(-3/2)
        b = int(n_grad * math.sqrt(it))
        u = torch.randn(n, b, dim, generator=generator).to(x.device)
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        probes = (xb[:, None] + delta[:, None, None] * u).clamp(lo_b, hi_b)
        phi = (_flat_labels(target, probes.reshape(n * b, dim)).view(n, b) != y[:, None]).float() * 2 - 1
        mean = phi.mean(1, keepdim=True)
        weights = torch.where(mean.abs() < 1, phi - mean, phi)  # baseline removes the bias of the estimate
        v = (weights[:, :, None] * u).mean(1)
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        xi = dist / math.sqrt(it)
        moved, done = xb.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
        for _ in range(10):  # geometric step-size search: halve until the point stays misclassified
            candidate = (xb + xi[:, None] * v).clamp(lo_b, hi_b)
            ok = (_flat_labels(target, candidate) != y) & ~done
            moved[ok], done = candidate[ok], done | ok
            xi = torch.where(done, xi, xi / 2)
            if bool(done.all()):
                break
        xb = line_search(target, x, moved, y, steps)
    return xb


def boundary_distance(target: Target, x: torch.Tensor, y: torch.Tensor, n_directions: int = 16, steps: int = 10,
                      iterations: int = 10, n_grad: int = 50, generator: torch.Generator | None = None,
                      max_values: int = 1 << 24) -> torch.Tensor:
    """Estimated L2 distance (n,) from each correctly labelled x to the boundary; the box diagonal when no label
    change was found."""
    generator = generator or torch.Generator().manual_seed(0)
    lo_b, hi_b = target.bounds
    flat = x.reshape(len(x), -1)
    r_max = (hi_b - lo_b) * math.sqrt(flat.shape[1])
    probes = max(n_directions, int(n_grad * math.sqrt(max(1, iterations))))
    chunk = max(1, max_values // (probes * flat.shape[1]))  # bounds the memory of one batch of probes
    out = [torch.zeros(0, device=x.device)]
    for xc, yc in zip(flat.split(chunk), y.split(chunk), strict=True):
        start, found = random_direction_start(target, xc, yc, n_directions, steps, generator)
        dist = torch.full((len(xc),), r_max, device=x.device)
        idx = found.nonzero().flatten()
        if len(idx):
            points = hopskipjump(target, xc[idx], yc[idx], start[idx], iterations, n_grad, steps, generator)
            dist[idx] = (points - xc[idx]).norm(dim=1)
        out.append(dist)
    return torch.cat(out)
