"""Lp-ball geometry shared by the evasion attacks: norms, projections, steepest-ascent steps, random starts."""

from __future__ import annotations

import torch

from bastion.core.errors import ParameterError

NORMS = ("linf", "l2", "l1")


def check_norm(norm: str) -> str:
    norm = norm.lower()
    if norm not in NORMS:
        raise ParameterError(f"unknown norm {norm!r}: use linf, l2 or l1")
    return norm


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1)


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of a batch of perturbations, shape (n,)."""
    flat = _flat(delta)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    return flat.abs().sum(dim=1)


def project_l1(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the L1 ball of radius eps (Duchi et al., ICML 2008)."""
    flat = _flat(delta)
    abs_flat = flat.abs()
    inside = abs_flat.sum(dim=1) <= eps
    sorted_abs, _ = abs_flat.sort(dim=1, descending=True)
    cumsum = sorted_abs.cumsum(dim=1)
    ks = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    cond = sorted_abs - (cumsum - eps[:, None]) / ks > 0
    rho = cond.float().cumsum(dim=1).argmax(dim=1, keepdim=True)  # last index where cond holds
    theta = ((cumsum.gather(1, rho) - eps[:, None]) / (rho + 1).to(flat.dtype)).clamp_min(0)
    projected = flat.sign() * (abs_flat - theta).clamp_min(0)
    return torch.where(inside[:, None], flat, projected).reshape(delta.shape)


def project(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Project perturbations onto the Lp ball of per-sample radius eps (shape (n,))."""
    if norm == "linf":
        e = _view(eps, delta)
        return torch.maximum(torch.minimum(delta, e), -e)
    if norm == "l2":
        n = lp_norm(delta, "l2").clamp_min(1e-12)
        factor = torch.clamp(eps / n, max=1.0)
        return delta * _view(factor, delta)
    return project_l1(delta, eps)


def ascent_step(grad: torch.Tensor, step: torch.Tensor, norm: str, l1_sparsity: float = 0.95) -> torch.Tensor:
    """Steepest-ascent direction of norm `step` for each sample's gradient.

    L∞: step·sign(g). L2: step·g/‖g‖₂. L1: the sparse step of Tramèr & Boneh (NeurIPS 2019) — sign of the
    gradient on its top (1 − l1_sparsity) fraction of coordinates, scaled to L1 norm `step`.
    """
    if norm == "linf":
        return _view(step, grad) * grad.sign()
    if norm == "l2":
        g = _flat(grad)
        return (step[:, None] * g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)).reshape(grad.shape)
    g = _flat(grad)
    k = max(1, int(round((1.0 - l1_sparsity) * g.shape[1])))
    threshold = g.abs().topk(k, dim=1).values[:, -1:]
    mask = (g.abs() >= threshold) & (g != 0)
    direction = g.sign() * mask
    direction = direction / direction.abs().sum(dim=1, keepdim=True).clamp_min(1.0)
    return (step[:, None] * direction).reshape(grad.shape)


def random_start(x: torch.Tensor, eps: torch.Tensor, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """A random perturbation inside the ball: uniform per coordinate (L∞), uniform radius on a random direction
    (L2, L1 via a Laplace direction)."""
    shape, device = x.shape, x.device
    if norm == "linf":
        u = torch.rand(shape, generator=generator, device="cpu").to(device)
        return (2 * u - 1) * _view(eps, x)
    noise = torch.randn(shape, generator=generator, device="cpu").to(device)
    if norm == "l1":
        noise = noise.sign() * torch.empty(shape).exponential_(generator=generator).to(device)
    radius = torch.rand(len(x), generator=generator, device="cpu").to(device) * eps
    direction = noise / _view(lp_norm(noise, norm).clamp_min(1e-12), x)
    return direction * _view(radius, x)
