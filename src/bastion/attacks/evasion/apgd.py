"""Auto-PGD (Croce & Hein, ICML 2020): APGD-CE, APGD-DLR and the targeted APGD-T.

PGD with momentum 0.75 and a step size that halves at checkpoints w_j = ⌈p_j·N⌉ (p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)) when, since the previous checkpoint, the loss rose in fewer than
75% of the steps, or neither the step size nor the best loss changed; after a halving the iterate restarts from
the best point. Each sample keeps its best iterate, fooled samples leave the active batch, restarts run only on
samples still robust. APGD-T attacks the `n_targets` classes of highest logit in turn with the targeted DLR loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from bastion.attacks.evasion.base import EvasionAttack, as_eps, clip_to
from bastion.attacks.evasion.losses import get_loss
from bastion.attacks.evasion.norms import ascent_step, project, random_start
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.gradients import forward_logits, loss_and_grad
from bastion.core.registry import register
from bastion.core.target import Target


def checkpoints(n_iter: int) -> list[int]:
    """The iterations at which APGD may halve its step size."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(q * n_iter, 9)) for q in p[1:] if q < 1})


class _State:
    """Per-sample state of one APGD run, indexed by the active samples (compacted together)."""

    fields = ("x", "y", "t", "eps", "step", "adv", "prev", "max_x", "max_grad", "max_loss", "cur_loss", "gains",
              "last_step", "last_max", "index")

    def __init__(self, **tensors: torch.Tensor | None):
        for name in self.fields:
            setattr(self, name, tensors.get(name))

    def keep(self, mask: torch.Tensor) -> None:
        for name in self.fields:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value[mask])


class APGD(EvasionAttack):
    """Auto-PGD with a cross-entropy or DLR loss, optionally targeted (see module docstring).

    Inputs (n, *input_shape) within the target's bounds; `steps` iterations per restart and target class."""

    name = "apgd"
    loss_name = "ce"
    targeted = False

    def __init__(self, eps: float | str | Sequence[float] = 8 / 255, *, norm: str = "linf", steps: int = 100,
                 restarts: int = 1, n_targets: int = 9, momentum: float = 0.75, rho: float = 0.75,
                 compact_every: int = 1, seed: int = 0):
        super().__init__(eps, norm=norm, seed=seed)
        if steps < 1 or restarts < 1 or n_targets < 1 or compact_every < 1:
            raise ParameterError("steps, restarts, n_targets and compact_every must be at least 1")
        if not 0 <= momentum < 1 or not 0 < rho <= 1:
            raise ParameterError("momentum must be in [0, 1) and rho in (0, 1]")
        self.steps, self.restarts, self.n_targets = int(steps), int(restarts), int(n_targets)
        self.momentum, self.rho, self.compact_every = float(momentum), float(rho), int(compact_every)

    def prepare(self, target: Target, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        get_loss(self.loss_name, target.n_classes, self.targeted)  # refuses DLR with too few classes, early
        return super().prepare(target, data)

    def perturb(self, target: Target, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        loss = get_loss(self.loss_name, target.n_classes, self.targeted)
        eps = as_eps(eps, x)
        gen = self.generator()
        best = x.clone()
        robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
        ranked = None
        if self.targeted:
            ranked = forward_logits(target, x).argsort(dim=1, descending=True)
        rounds = range(min(self.n_targets, target.n_classes - 1)) if self.targeted else range(1)
        for j in rounds:
            for _ in range(self.restarts):
                idx = robust.nonzero().flatten()
                if len(idx) == 0:
                    return best
                t = None if ranked is None else _target_class(ranked[idx], y[idx], j)
                adv, fooled = self._one_run(target, x[idx], y[idx], t, eps[idx], loss, gen)
                best[idx] = adv
                robust[idx[fooled]] = False
        return best

    def _one_run(self, target: Target, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None,
                 eps: torch.Tensor, loss, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n, dev = len(x), x.device
        view = [-1] + [1] * (x.dim() - 1)
        adv0 = clip_to(x + random_start(x, eps, self.norm, gen), target)
        best = adv0.clone()
        fooled = torch.zeros(n, dtype=torch.bool, device=dev)
        s = _State(x=x, y=y, t=t, eps=eps, step=2.0 * eps, adv=adv0, prev=adv0,
                   max_x=adv0, max_grad=torch.zeros_like(x), max_loss=torch.full((n,), -float("inf"), device=dev),
                   cur_loss=None, gains=torch.zeros(n, device=dev), last_step=2.0 * eps,
                   last_max=torch.full((n,), -float("inf"), device=dev), index=torch.arange(n, device=dev))
        marks = set(checkpoints(self.steps))
        last_mark = 0
        for i in range(self.steps + 1):
            if i == self.steps:
                logits = forward_logits(target, s.adv)
                value = loss(logits, s.y, s.t)
            else:
                value, grad, logits = loss_and_grad(target, s.adv, s.y, loss, s.t)
            hit = logits.argmax(1) != s.y
            new_hit = hit & ~fooled[s.index]
            best[s.index[new_hit]] = s.adv[new_hit]
            fooled[s.index] |= hit
            up = value > s.max_loss
            if s.cur_loss is not None:
                s.gains += (value > s.cur_loss).float()
            s.cur_loss = value
            s.max_x = torch.where(up.view(view), s.adv, s.max_x)
            s.max_loss = torch.where(up, value, s.max_loss)
            if i == self.steps:
                break
            s.max_grad = torch.where(up.view(view), grad, s.max_grad)
            if i == 0:
                s.last_max = s.max_loss.clone()
            if i in marks:  # step-size schedule: conditions 1 and 2 of the paper
                cond1 = s.gains < self.rho * (i - last_mark)
                cond2 = (s.last_step == s.step) & (s.last_max == s.max_loss)
                halve = cond1 | cond2
                s.last_step, s.last_max = s.step.clone(), s.max_loss.clone()
                s.step = torch.where(halve, s.step / 2, s.step)
                s.adv = torch.where(halve.view(view), s.max_x, s.adv)  # restart from the best point
                grad = torch.where(halve.view(view), s.max_grad, grad)
                s.cur_loss = torch.where(halve, s.max_loss, s.cur_loss)
                s.gains.zero_()
                last_mark = i
            z = clip_to(s.x + project(s.adv + ascent_step(grad, s.step, self.norm) - s.x, s.eps, self.norm), target)
            a = 1.0 if i == 0 else self.momentum
            nxt = s.adv + a * (z - s.adv) + (1 - a) * (s.adv - s.prev)
            s.prev, s.adv = s.adv, clip_to(s.x + project(nxt - s.x, s.eps, self.norm), target)
            if (i + 1) % self.compact_every == 0:
                keep = ~fooled[s.index]
                if not bool(keep.all()):
                    if not bool(keep.any()):
                        break
                    s.keep(keep)
        left = ~fooled[s.index]  # never fooled: return the point of highest loss
        best[s.index[left]] = s.max_x[left]
        return best, fooled


def _target_class(ranked: torch.Tensor, y: torch.Tensor, j: int) -> torch.Tensor:
    """The j-th most likely class other than y for each sample."""
    others = ranked[ranked != y[:, None]].view(len(y), -1)
    return others[:, j]


@register("attacks", "apgd-ce", family="evasion",
          summary="Auto-PGD, cross-entropy loss (Croce & Hein 2020)")
class APGDCE(APGD):
    """APGD with the cross-entropy loss (Croce & Hein, ICML 2020).

    Example:
        >>> from bastion.attacks.evasion.apgd import APGDCE
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = APGDCE(eps=0.0314).run(target, data)
        >>> result.metrics["robust_accuracy"]
    """

    name = "apgd-ce"
    loss_name = "ce"


@register("attacks", "apgd-dlr", family="evasion",
          summary="Auto-PGD, DLR loss, ≥ 3 classes (Croce & Hein 2020)")
class APGDDLR(APGD):
    """APGD with the Difference of Logits Ratio loss (Croce & Hein, ICML 2020); needs ≥ 3 classes.

    Example:
        >>> from bastion.attacks.evasion.apgd import APGDDLR
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = APGDDLR(eps=0.0314).run(target, data)
        >>> result.metrics["robust_accuracy"]
    """

    name = "apgd-dlr"
    loss_name = "dlr"


@register("attacks", "apgd-t", family="evasion",
          summary="Targeted Auto-PGD, targeted DLR loss, ≥ 4 classes (Croce & Hein 2020)")
class APGDT(APGD):
    """Targeted APGD with the targeted DLR loss over the top `n_targets` classes (Croce & Hein, ICML 2020);
    needs ≥ 4 classes.

    Example:
        >>> from bastion.attacks.evasion.apgd import APGDT
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = APGDT(eps=0.0314).run(target, data)
        >>> result.metrics["robust_accuracy"]
    """

    name = "apgd-t"
    loss_name = "dlr"
    targeted = True
