"""FGSM and PGD: first-order white-box attacks under L∞, L2 and L1 constraints."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bastion.attacks.evasion.base import EvasionAttack, as_eps, clip_to
from bastion.attacks.evasion.norms import ascent_step, project, random_start
from bastion.core.errors import ParameterError
from bastion.core.gradients import ce_loss, forward_logits, loss_and_grad
from bastion.core.registry import register
from bastion.core.target import Target


def _bcast(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *[1] * (like.dim() - 1))


@register("attacks", "fgsm", family="evasion",
          summary="FGSM, one gradient-sign step (Goodfellow 2015)")
class FGSM(EvasionAttack):
    """Fast Gradient Sign Method (Goodfellow, Shlens & Szegedy, ICLR 2015).

    One step of size eps along the sign of the loss gradient (L∞), or along the normalised gradient (L2, L1).
    Inputs (n, *input_shape) within the target's bounds; returns examples within eps and the bounds.

    Example:
        >>> from bastion.attacks.evasion.gradient import FGSM
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = FGSM(eps=0.0314).run(target, data)
        >>> result.metrics["robust_accuracy"]
    """

    name = "fgsm"
    prepass = False  # one step: cheaper than the pass itself

    def perturb(self, target: Target, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        eps = as_eps(eps, x)
        _, grad, _ = loss_and_grad(target, x, y)
        return clip_to(x + project(ascent_step(grad, eps, self.norm), eps, self.norm), target).detach()


@register("attacks", "pgd", family="evasion",
          summary="PGD with random start and restarts, L∞/L2/L1 (Madry 2018)")
class PGD(EvasionAttack):
    """Projected Gradient Descent with random start (Madry et al., ICLR 2018), L∞, L2 or L1 (sparse L1 steps of
    Tramèr & Boneh, NeurIPS 2019).

    `steps` iterations of size `step_size` (default 2.5·eps/steps), each projected back onto the Lp ball and
    the input bounds; `restarts` random restarts run only on samples still robust. Each sample keeps its best
    iterate (the first that fools the model, else the one of highest loss) and fooled samples leave the active
    batch every `compact_every` steps; the attack stops when none are left.

    Example:
        >>> from bastion.attacks.evasion.gradient import PGD
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = PGD(eps=0.0314).run(target, data)
        >>> result.metrics["robust_accuracy"]
    """

    name = "pgd"

    def __init__(self, eps: float | str | Sequence[float] = 8 / 255, *, norm: str = "linf", steps: int = 10,
                 step_size: float | None = None, restarts: int = 1, random_init: bool = True,
                 compact_every: int = 1, seed: int = 0):
        super().__init__(eps, norm=norm, seed=seed)
        if steps < 1 or restarts < 1 or compact_every < 1:
            raise ParameterError("steps, restarts and compact_every must be at least 1")
        if step_size is not None and step_size <= 0:
            raise ParameterError("step_size must be positive")
        self.steps, self.step_size, self.restarts = int(steps), step_size, int(restarts)
        self.random_init, self.compact_every = bool(random_init), int(compact_every)

    def perturb(self, target: Target, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        return self.perturb_judged(target, x, y, eps)[0]

    def perturb_judged(self, target: Target, x: torch.Tensor, y: torch.Tensor,
                       eps: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gen = self.generator()
        eps = as_eps(eps, x)
        best = x.clone()
        robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            idx = robust.nonzero().flatten()
            if len(idx) == 0:
                break
            adv, fooled = self._one_run(target, x[idx], y[idx], eps[idx], gen)
            best[idx] = adv
            robust[idx[fooled]] = False
        return best, ~robust

    def _one_run(self, target: Target, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(x)
        step = eps * (2.5 / self.steps) if self.step_size is None else torch.full_like(eps, self.step_size)
        delta = random_start(x, eps, self.norm, gen) if self.random_init else torch.zeros_like(x)
        adv = clip_to(x + delta, target)
        best, best_loss = adv.clone(), torch.full((n,), -float("inf"), device=x.device)
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        active = torch.arange(n, device=x.device)  # indices into x of the samples still attacked
        xa, ya, ea, sa = x, y, eps, step
        for i in range(self.steps + 1):
            if i == self.steps:  # the last iterate only needs to be judged
                logits = forward_logits(target, adv)
                loss = ce_loss(logits, ya)
            else:
                loss, grad, logits = loss_and_grad(target, adv, ya)
            done = fooled[active]
            hit = logits.argmax(-1) != ya
            improve = ~done & (hit | (loss > best_loss[active]))
            best[active] = torch.where(_bcast(improve, adv), adv, best[active])
            best_loss[active] = torch.where(improve, loss, best_loss[active])
            done = done | hit
            fooled[active] = done
            if i == self.steps:
                break
            adv = adv + ascent_step(grad, sa, self.norm)
            adv = clip_to(xa + project(adv - xa, ea, self.norm), target)
            if (i + 1) % self.compact_every == 0:
                keep = ~done
                if not bool(keep.all()):
                    if not bool(keep.any()):
                        break
                    active, adv = active[keep], adv[keep]
                    xa, ya, ea, sa = xa[keep], ya[keep], ea[keep], sa[keep]
        return best, fooled
