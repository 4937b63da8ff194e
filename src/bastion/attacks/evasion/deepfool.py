"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bastion.attacks.evasion.base import MinNormAttack
from bastion.attacks.evasion.norms import lp_norm
from bastion.core.errors import ParameterError
from bastion.core.gradients import forward_logits
from bastion.core.registry import register
from bastion.core.target import Target

DUAL = {"linf": "l1", "l2": "l2", "l1": "linf"}


def class_gradients(target: Target, x: torch.Tensor, y: torch.Tensor,
                    classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each candidate class k (classes: (n, m)): f_k = z_k − z_y and w_k = ∇f_k, shapes (n, m), (n, m, *x)."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = target.logits(xg)
        true = logits.gather(1, y[:, None])
        diffs = logits.gather(1, classes) - true
        grads = []
        for j in range(classes.shape[1]):
            col = diffs[:, j]
            if not col.requires_grad:
                grads.append(torch.zeros_like(x))
                continue
            (g,) = torch.autograd.grad(col.sum(), xg, retain_graph=j + 1 < classes.shape[1], allow_unused=True)
            grads.append(torch.zeros_like(x) if g is None else g)
    return diffs.detach(), torch.stack(grads, dim=1).detach()


@register("attacks", "deepfool", family="evasion",
          summary="DeepFool minimum-norm attack (Moosavi-Dezfooli 2016)")
class DeepFool(MinNormAttack):
    """DeepFool: repeatedly step to the nearest linearised decision boundary, L2, L∞ or L1.

    At x_i, for the `candidates` classes of highest clean logit, f_k = z_k − z_y and w_k = ∇f_k; the nearest
    boundary is l = argmin_k |f_k| / ‖w_k‖_q (q the dual norm) and the step is r = |f_l| / ‖w_l‖_q^q ·
    |w_l|^{q−1} ⊙ sign(w_l) (L2: |f|·w/‖w‖², L∞: |f|·sign(w)/‖w‖₁, L1: the largest coordinate). Steps
    accumulate; x_{i+1} = clip(x + (1 + overshoot)·Σr). A sample leaves the batch once it is fooled.

    Reference: Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to fool deep neural
    networks", CVPR 2016.

    Example:
        >>> from bastion.attacks.evasion.deepfool import DeepFool
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = DeepFool(eps=0.0314).run(target, data)
        >>> result.metrics["robust_accuracy"]
    """

    name = "deepfool"

    def __init__(self, eps: float | str | Sequence[float] = 8 / 255, *, norm: str = "l2", steps: int = 50,
                 candidates: int = 10, overshoot: float = 0.02, seed: int = 0):
        super().__init__(eps, norm=norm, seed=seed)
        if steps < 1 or candidates < 2 or overshoot < 0:
            raise ParameterError("DeepFool needs steps >= 1, candidates >= 2 and overshoot >= 0")
        self.steps, self.candidates, self.overshoot = int(steps), int(candidates), float(overshoot)

    def _step(self, f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The minimal step reaching the linearised boundary f + ⟨w, r⟩ = 0 in the attack norm."""
        flat = w.flatten(1)
        size = f.abs() + 1e-4
        if self.norm == "l2":
            r = flat * (size / flat.pow(2).sum(1).clamp_min(1e-12))[:, None]
        elif self.norm == "linf":
            r = flat.sign() * (size / flat.abs().sum(1).clamp_min(1e-12))[:, None]
        else:
            top = flat.abs().argmax(dim=1, keepdim=True)
            g = flat.gather(1, top)
            r = torch.zeros_like(flat).scatter(1, top, size[:, None] / g.abs().clamp_min(1e-12) * g.sign())
        return r.view_as(w)

    def minimize(self, target: Target, x: torch.Tensor, y: torch.Tensor,
                 stop: torch.Tensor | None = None) -> torch.Tensor:
        lo, hi = target.bounds
        ranked = forward_logits(target, x).argsort(dim=1, descending=True)
        others = ranked[ranked != y[:, None]].view(len(x), -1)[:, : self.candidates - 1]
        best = x.clone()
        total = torch.zeros_like(x)
        active = torch.arange(len(x), device=x.device)
        cur = x.clone()
        for _ in range(self.steps):
            f, w = class_gradients(target, cur, y[active], others[active])
            dual = lp_norm(w.flatten(0, 1), DUAL[self.norm]).view(f.shape)
            dist = f.abs() / (dual + 1e-12)
            pick = dist.argmin(dim=1)
            rows = torch.arange(len(active), device=x.device)
            total[active] += self._step(f[rows, pick], w[rows, pick])
            cur = (x[active] + (1 + self.overshoot) * total[active]).clamp(lo, hi)
            fooled = forward_logits(target, cur).argmax(1) != y[active]
            best[active[fooled]] = cur[fooled]
            keep = ~fooled
            if not bool(keep.any()):
                break
            active, cur = active[keep], cur[keep]
        return best
