"""Carlini & Wagner L2 attack (Carlini & Wagner, IEEE S&P 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bastion.attacks.evasion.base import MinNormAttack
from bastion.attacks.evasion.losses import margin
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import Target


@register("attacks", "cw", family="evasion",
          summary="Carlini & Wagner L2 minimum-norm attack (2017)")
class CarliniWagnerL2(MinNormAttack):
    """C&W L2: minimise ‖x' − x‖²₂ + c·max(z_y − max_{j≠y} z_j, −κ) over x' = lo + (hi − lo)(tanh(w) + 1)/2.

    The change of variable keeps x' inside the bounds; Adam (learning rate `lr`) runs `steps` iterations per
    value of c, and a per-sample binary search over c (`binary_steps` rounds from `initial_const`) looks for the
    smallest perturbation that still fools. Each sample keeps its smallest fooling example; a sample whose loss
    stopped decreasing leaves the active batch for the rest of the round (the paper's early abort).

    Reference: Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.

    Example:
        >>> from bastion.attacks.evasion.cw import CarliniWagnerL2
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = CarliniWagnerL2(eps=0.5).run(target, data)
        >>> result.metrics["robust_accuracy"]
    """

    name = "cw"
    norms = ("l2",)

    def __init__(self, eps: float | str | Sequence[float] = 0.5, *, norm: str = "l2", steps: int = 100,
                 binary_steps: int = 6, initial_const: float = 1.0, lr: float = 0.05, confidence: float = 0.0,
                 seed: int = 0):
        super().__init__(eps, norm=norm, seed=seed)
        if steps < 1 or binary_steps < 1:
            raise ParameterError("steps and binary_steps must be at least 1")
        if initial_const <= 0 or lr <= 0 or confidence < 0:
            raise ParameterError("initial_const and lr must be positive and confidence non-negative")
        self.steps, self.binary_steps = int(steps), int(binary_steps)
        self.initial_const, self.lr, self.confidence = float(initial_const), float(lr), float(confidence)

    def minimize(self, target: Target, x: torch.Tensor, y: torch.Tensor,
                 stop: torch.Tensor | None = None) -> torch.Tensor:
        lo, hi = target.bounds
        n, dev = len(x), x.device
        w0 = torch.atanh(((x - lo) / (hi - lo) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        best, best_l2 = x.clone(), torch.full((n,), float("inf"), device=dev)
        const = torch.full((n,), self.initial_const, device=dev)
        lower, upper = torch.zeros(n, device=dev), torch.full((n,), float("inf"), device=dev)
        stop = torch.zeros(n, device=dev) if stop is None else stop
        for _ in range(self.binary_steps):
            idx = (best_l2 > stop).nonzero().flatten()
            if len(idx) == 0:
                break
            success = self._round(target, x[idx], y[idx], w0[idx], const[idx], best, best_l2, idx, lo, hi)
            upper[idx] = torch.where(success, torch.minimum(upper[idx], const[idx]), upper[idx])
            lower[idx] = torch.where(success, lower[idx], torch.maximum(lower[idx], const[idx]))
            bounded = torch.isfinite(upper[idx])
            const[idx] = torch.where(bounded, (lower[idx] + upper[idx]) / 2, const[idx] * 10)
        return best

    def _round(self, target: Target, x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, const: torch.Tensor,
               best: torch.Tensor, best_l2: torch.Tensor, idx: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        """One value of c per sample: Adam on w (written out so that finished samples can be dropped)."""
        b1, b2, tiny = 0.9, 0.999, 1e-8
        w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
        success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        prev = torch.full((len(x),), float("inf"), device=x.device)
        active = torch.arange(len(x), device=x.device)
        check = max(1, self.steps // 10)
        for step in range(1, self.steps + 1):
            wa = w.detach().requires_grad_(True)
            with torch.enable_grad():
                adv = lo + (hi - lo) * (torch.tanh(wa) + 1) / 2
                logits = target.logits(adv)
                l2 = (adv - x[active]).flatten(1).pow(2).sum(dim=1)
                f = (margin(logits, y[active]) + self.confidence).clamp_min(0)
                loss = l2 + const[active] * f
                (grad,) = torch.autograd.grad(loss.sum(), wa)
            with torch.no_grad():
                fooled = (logits.argmax(1) != y[active]) & (f <= 0)
                success[active] |= fooled
                dist = l2.sqrt()
                better = fooled & (dist < best_l2[idx[active]])
                best[idx[active[better]]] = adv[better].detach()
                best_l2[idx[active[better]]] = dist[better]
                m = b1 * m + (1 - b1) * grad
                v = b2 * v + (1 - b2) * grad * grad
                m_hat, v_hat = m / (1 - b1 ** step), v / (1 - b2 ** step)
                w = w - self.lr * m_hat / (v_hat.sqrt() + tiny)
                if step % check == 0:
                    keep = loss < 0.9999 * prev[active]
                    prev[active] = loss
                    if not bool(keep.all()):
                        if not bool(keep.any()):
                            break
                        active, w, m, v = active[keep], w[keep], m[keep], v[keep]
        return success
