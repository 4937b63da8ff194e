"""FGSM and PGD: first-order white-box attacks under L∞, L2 and L1 constraints."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bastion.attacks.evasion.base import EvasionAttack
from bastion.attacks.evasion.norms import ascent_step, project, random_start
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import Target


def loss_and_grad(target: Target, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample cross-entropy, its input gradient, and the logits, from one forward-backward pass."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = target.logits(x)
        loss = F.cross_entropy(logits, y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad.detach(), logits.detach()


def _clip(x: torch.Tensor, target: Target) -> torch.Tensor:
    return x.clamp(target.bounds[0], target.bounds[1])


@register("attacks", "fgsm", family="evasion")
class FGSM(EvasionAttack):
    """Fast Gradient Sign Method (Goodfellow, Shlens & Szegedy, ICLR 2015).

    One step of size eps along the sign of the loss gradient (L∞), or along the normalised gradient (L2, L1).
    Inputs (n, *input_shape) within the target's bounds; returns examples within eps and the bounds.
    """

    name = "fgsm"

    def perturb(self, target: Target, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        _, grad, _ = loss_and_grad(target, x, y)
        eps_t = torch.full((len(x),), eps, device=x.device)
        return _clip(x + ascent_step(grad, eps_t, self.norm), target).detach()


@register("attacks", "pgd", family="evasion")
class PGD(EvasionAttack):
    """Projected Gradient Descent with random start (Madry et al., ICLR 2018).

    `steps` iterations of size `step_size` (default 2.5·eps/steps), each projected back onto the Lp ball and
    the input bounds; `restarts` random restarts run only on samples still robust. Each sample keeps its best
    iterate (the first that fools the model, else the one of highest loss) and fooled samples leave the active
    batch every `compact_every` steps; the attack stops when none are left.
    """

    name = "pgd"

    def __init__(self, eps: float | str | Sequence[float] = 8 / 255, norm: str = "linf", steps: int = 10,
                 step_size: float | None = None, restarts: int = 1, random_init: bool = True,
                 compact_every: int = 5, seed: int = 0):
        super().__init__(eps, norm, seed)
        if steps < 1 or restarts < 1 or compact_every < 1:
            raise ParameterError("steps, restarts and compact_every must be at least 1")
        if step_size is not None and step_size <= 0:
            raise ParameterError("step_size must be positive")
        self.steps, self.step_size, self.restarts = int(steps), step_size, int(restarts)
        self.random_init, self.compact_every = bool(random_init), int(compact_every)

    def perturb(self, target: Target, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        gen = self.generator()
        best = x.clone()
        robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            idx = robust.nonzero().flatten()
            if len(idx) == 0:
                break
            adv, fooled = self._one_run(target, x[idx], y[idx], eps, gen)
            best[idx] = adv
            robust[idx[fooled]] = False
        return best

    def _one_run(self, target: Target, x: torch.Tensor, y: torch.Tensor, eps: float,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(x)
        eps_t = torch.full((n,), eps, device=x.device)
        step = torch.full((n,), self.step_size or 2.5 * eps / self.steps, device=x.device)
        delta = random_start(x, eps_t, self.norm, gen) if self.random_init else torch.zeros_like(x)
        adv = _clip(x + delta, target)
        best, best_loss = adv.clone(), torch.full((n,), -float("inf"), device=x.device)
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        active = torch.arange(n, device=x.device)  # indices into x of the samples still attacked
        for i in range(self.steps + 1):
            loss, grad, logits = loss_and_grad(target, adv, y[active])
            hit = logits.argmax(-1) != y[active]
            improve = hit | ((loss > best_loss[active]) & ~fooled[active])
            best[active] = torch.where(improve.view(-1, *[1] * (x.dim() - 1)), adv, best[active])
            best_loss[active] = torch.where(improve, loss, best_loss[active])
            fooled[active] |= hit
            if i == self.steps:
                break
            adv = adv + ascent_step(grad, step[active], self.norm)
            adv = _clip(x[active] + project(adv - x[active], eps_t[active], self.norm), target)
            if (i + 1) % self.compact_every == 0:
                keep = ~fooled[active]
                if not bool(keep.any()):
                    break
                active, adv = active[keep], adv[keep]
        return best, fooled
