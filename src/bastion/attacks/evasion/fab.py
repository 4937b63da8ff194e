"""FAB: the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), untargeted and targeted (FAB-T).

A minimum-norm white-box attack. At each step the decision boundary between the true class y and a class s is
linearised at the current iterate x_k (s = the closest boundary, or the target class for FAB-T). Both x_k and the
original x are projected onto that hyperplane inside the input box (`hyperplane.project_hyperplane_box`), giving
δ_k and δ_0; the next iterate is the biased combination

    x_{k+1} = clip((1 − α)(x_k + η δ_k) + α (x + η δ_0)),   α = min(‖δ_k‖ / (‖δ_k‖ + ‖δ_0‖), α_max),

with overshoot η = 1.05 and α_max = 0.1. Once x_{k+1} is adversarial it is recorded if it is the closest so far,
and the iterate steps back towards x: x_{k+1} ← (1 − β) x + β x_{k+1} with β = 0.9. Restarts begin at a random
point at half the distance of the best example found. FAB-T runs the targeted version on the `n_targets` classes
of highest logit in turn, only on samples not yet close enough.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bastion.attacks.evasion.base import MinNormAttack
from bastion.attacks.evasion.hyperplane import project_hyperplane_box
from bastion.attacks.evasion.norms import lp_norm, random_start
from bastion.core.errors import ParameterError
from bastion.core.gradients import forward_logits
from bastion.core.registry import register
from bastion.core.target import Target

DUAL = {"linf": "l1", "l2": "l2", "l1": "linf"}


def linearize(target: Target, x: torch.Tensor, y: torch.Tensor,
              t: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """f = z_s − z_y and its input gradient w at x, for s = t (targeted) or the class whose linearised boundary
    is closest in the attack norm's dual (untargeted; one backward pass per class)."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = target.logits(xg)
        true = logits.gather(1, y[:, None]).squeeze(1)
        if t is not None:
            diff = logits.gather(1, t[:, None]).squeeze(1) - true
            grad = _grad(diff, xg, retain=False)
            return diff.detach(), grad
        grads = torch.stack([_grad(logits[:, j], xg, retain=True) for j in range(logits.shape[1])], dim=1)
    logits = logits.detach()
    diffs = logits - logits.gather(1, y[:, None])
    ws = grads - grads.gather(1, y.view(-1, 1, *[1] * (x.dim() - 1)).expand(-1, 1, *x.shape[1:]))
    return diffs, ws


def _grad(value: torch.Tensor, x: torch.Tensor, retain: bool) -> torch.Tensor:
    if not value.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(value.sum(), x, retain_graph=retain, allow_unused=True)
    return torch.zeros_like(x) if g is None else g.detach()


def _closest(diffs: torch.Tensor, ws: torch.Tensor, y: torch.Tensor, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick, per sample, the class whose linearised boundary is nearest: |f_j| / ‖w_j‖_q over j ≠ y."""
    n, c = diffs.shape
    dual = lp_norm(ws.reshape(n * c, *ws.shape[2:]), DUAL[norm]).view(n, c)
    dist = diffs.abs() / (dual + 1e-12)
    dist = dist.scatter(1, y[:, None], float("inf"))
    s = dist.argmin(dim=1)
    return diffs.gather(1, s[:, None]).squeeze(1), ws[torch.arange(n, device=ws.device), s]


class FABBase(MinNormAttack):
    """Shared loop of FAB and FAB-T (see the module docstring)."""

    targeted = False

    def __init__(self, eps: float | str | Sequence[float] = 8 / 255, *, norm: str = "linf", steps: int = 100,
                 restarts: int = 1, n_targets: int = 9, alpha_max: float = 0.1, eta: float = 1.05,
                 beta: float = 0.9, seed: int = 0):
        super().__init__(eps, norm=norm, seed=seed)
        if steps < 1 or restarts < 1 or n_targets < 1:
            raise ParameterError("steps, restarts and n_targets must be at least 1")
        if not (0 < alpha_max < 1 and eta >= 1 and 0 < beta < 1):
            raise ParameterError("FAB needs 0 < alpha_max < 1, eta >= 1 and 0 < beta < 1")
        self.steps, self.restarts, self.n_targets = int(steps), int(restarts), int(n_targets)
        self.alpha_max, self.eta, self.beta = float(alpha_max), float(eta), float(beta)

    def minimize(self, target: Target, x: torch.Tensor, y: torch.Tensor,
                 stop: torch.Tensor | None = None) -> torch.Tensor:
        gen = self.generator()
        best, dist = x.clone(), torch.full((len(x),), float("inf"), device=x.device)
        stop = torch.zeros(len(x), device=x.device) if stop is None else stop
        ranked = forward_logits(target, x).argsort(dim=1, descending=True) if self.targeted else None
        n_rounds = min(self.n_targets, target.n_classes - 1) if self.targeted else 1
        for j in range(n_rounds):
            for r in range(self.restarts):
                idx = (dist > stop).nonzero().flatten()
                if len(idx) == 0:
                    return best
                t = None
                if ranked is not None:
                    others = ranked[idx][ranked[idx] != y[idx][:, None]].view(len(idx), -1)
                    t = others[:, j]
                adv, d = self._one_run(target, x[idx], y[idx], t, stop[idx], dist[idx], gen, restart=r > 0)
                better = d < dist[idx]
                best[idx[better]], dist[idx[better]] = adv[better], d[better]
        return best

    def _one_run(self, target: Target, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None,
                 stop: torch.Tensor, known: torch.Tensor, gen: torch.Generator,
                 restart: bool) -> tuple[torch.Tensor, torch.Tensor]:
        n, dev = len(x), x.device
        view = [-1] + [1] * (x.dim() - 1)
        lo, hi = target.bounds
        best, dist = x.clone(), torch.full((n,), float("inf"), device=dev)
        cur = x.clone()
        if restart:
            default = 0.1 * (hi - lo) * {"linf": 1.0, "l2": x[0].numel() ** 0.5, "l1": float(x[0].numel())}[self.norm]
            radius = torch.where(torch.isfinite(known), known, torch.maximum(stop, torch.full_like(stop, default)))
            cur = (x + random_start(x, 0.5 * radius, self.norm, gen)).clamp(lo, hi)
        active = torch.arange(n, device=dev)
        for _ in range(self.steps):
            xa, ya = x[active], y[active]
            ta = None if t is None else t[active]
            f, w = linearize(target, cur, ya, ta)
            if ta is None:
                f, w = _closest(f, w, ya, self.norm)
            wf, cf, xf = w.flatten(1), cur.flatten(1), xa.flatten(1)
            d_cur = project_hyperplane_box(wf, -f, lo - cf, hi - cf, self.norm)
            f_orig = f + (wf * (xf - cf)).sum(dim=1)
            d_orig = project_hyperplane_box(wf, -f_orig, lo - xf, hi - xf, self.norm)
            n_cur, n_orig = lp_norm(d_cur, self.norm), lp_norm(d_orig, self.norm)
            alpha = (n_cur / (n_cur + n_orig).clamp_min(1e-12)).clamp(max=self.alpha_max).view(-1, 1)
            new = ((1 - alpha) * (cf + self.eta * d_cur) + alpha * (xf + self.eta * d_orig)).clamp(lo, hi)
            new = new.view_as(xa)
            is_adv = forward_logits(target, new).argmax(1) != ya
            d = lp_norm(new - xa, self.norm)
            better = is_adv & (d < dist[active])
            best[active[better]], dist[active[better]] = new[better], d[better]
            cur = torch.where(is_adv.view(view), (1 - self.beta) * xa + self.beta * new, new)
            keep = dist[active] > stop[active]  # close enough: leaves the active batch
            if not bool(keep.all()):
                if not bool(keep.any()):
                    break
                active, cur = active[keep], cur[keep]
        return best, dist


@register("attacks", "fab", family="evasion",
          summary="FAB minimum-norm attack, untargeted (Croce & Hein 2020)")
class FAB(FABBase):
    """FAB, untargeted (Croce & Hein, ICML 2020): minimum-norm adversarial examples, L∞, L2 or L1.

    Each step needs the gradient of every logit (one backward pass per class); see FAB-T for the cheaper
    targeted version.

    Example:
        >>> from bastion.attacks.evasion.fab import FAB
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = FAB(eps=0.0314).run(target, data)
        >>> result.metrics["robust_accuracy"]
    """

    name = "fab"


@register("attacks", "fab-t", family="evasion",
          summary="FAB-T minimum-norm attack, targeted (Croce & Hein 2020)")
class FABT(FABBase):
    """FAB-T, targeted FAB over the `n_targets` most likely classes (Croce & Hein, ICML 2020): one backward
    pass per step.

    Example:
        >>> from bastion.attacks.evasion.fab import FABT
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = FABT(eps=0.0314).run(target, data)
        >>> result.metrics["robust_accuracy"]
    """

    name = "fab-t"
    targeted = True
