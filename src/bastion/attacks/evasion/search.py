"""Sharing work across epsilons: which samples to attack at which epsilon, and what each answer implies.

Each correctly classified sample keeps two facts: `dist`, the norm of the smallest valid adversarial example found
so far (inf when none), and `robust_upto`, the largest epsilon index at which an attack failed (-1 when none).
An example within a small ball is inside every larger one, so a sample is broken at every eps >= dist; a failed
attack at eps_k is taken to mean robust at every eps <= eps_k. The search probes each sample top-down, at the
largest epsilon it is not yet known to be broken at, until both facts meet:

- a cheap minimum-norm pass (`prepass`, white-box attacks) first bounds each sample's minimal perturbation;
- round one attacks every sample at the largest epsilon it is not known broken at;
- a success is projected onto the smaller balls of the grid (one forward pass per grid point, no gradient),
  which settles most weak samples at once;
- a failure settles the sample at every smaller epsilon.

A robust sample therefore costs one full (failed) attack plus cheap successes, whatever the number of epsilons.
Every example is checked in float32 (finite, inside the bounds, within its epsilon) before it counts.
"""

from __future__ import annotations

import torch

from bastion.attacks.evasion.norms import ascent_step, lp_norm, project
from bastion.core.gradients import forward_logits, loss_and_grad
from bastion.core.target import Target


class EpsSearch:
    """Book-keeping of a multi-epsilon evaluation over the samples (x, y) of one run."""

    def __init__(self, target: Target, x: torch.Tensor, y: torch.Tensor, eps: list[float], norm: str):
        self.target, self.x, self.y, self.norm = target, x, y, norm
        self.eps_values = [float(e) for e in eps]
        self.eps = torch.tensor(eps, dtype=torch.float32, device=x.device)
        self.correct = target.labels(x) == y
        n = len(x)
        self.dist = torch.where(self.correct, float("inf"), 0.0).to(x.device)
        self.robust_upto = torch.full((n,), -1, dtype=torch.long, device=x.device)
        self.adv = x.clone()
        self.violations = 0
        self.stopped: str | None = None  # why the search covers only some samples (a budget or deadline)

    @classmethod
    def join(cls, parts: list[EpsSearch], stopped: str | None = None) -> EpsSearch:
        """One search over the samples of `parts`, searched batch by batch (their per-sample facts side by side)."""
        if len(parts) == 1 and stopped is None:
            return parts[0]
        first = parts[0]
        out = cls.__new__(cls)
        out.target, out.norm, out.eps_values, out.eps = first.target, first.norm, first.eps_values, first.eps
        for name in ("x", "y", "correct", "dist", "robust_upto", "adv"):
            setattr(out, name, torch.cat([getattr(p, name) for p in parts]))
        out.violations = sum(p.violations for p in parts)
        out.stopped = stopped
        return out

    @property
    def k(self) -> int:
        return len(self.eps)

    def broken_from(self) -> torch.Tensor:
        """Per sample, the smallest eps index at which it is known broken (k when none)."""
        # the same float32 tolerance as `valid_examples`: an example at eps·(1 + 1e-5) counts as within eps
        return torch.searchsorted(self.eps * (1 + 1e-5) + 1e-7, self.dist.contiguous())

    def next_probe(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The samples still undecided and the eps index to attack each at; None when all are decided."""
        broken = self.broken_from()
        pending = self.correct & (self.robust_upto + 1 < broken)
        idx = pending.nonzero().flatten()
        if len(idx) == 0:
            return None
        return idx, broken[idx] - 1

    def prepass(self, gradients: Target | None = None, steps: int = 10) -> None:
        """A cheap minimum-norm pass: gradient ascent from x itself with steps of 2·eps_max/steps, projected onto
        the largest ball; a sample stops at its first fooling iterate, whose norm (then shrunk onto the grid)
        bounds its minimal perturbation. Robust samples cost `steps` gradients; weak ones a few. `gradients` is
        the view to differentiate (default: the judged target); hits are re-judged on the target."""
        idx = (self.correct & torch.isinf(self.dist)).nonzero().flatten()
        if len(idx) == 0:
            return
        grad_target = gradients or self.target
        lo, hi = self.target.bounds
        top = self.eps[-1].expand(len(idx)).contiguous()
        step = top * (2.0 / steps)
        x0, y0, adv = self.x[idx], self.y[idx], self.x[idx].clone()
        for i in range(steps + 1):
            if i == steps:
                logits, grad = forward_logits(grad_target, adv), None
            else:
                _, grad, logits = loss_and_grad(grad_target, adv, y0)
            hit = logits.argmax(1) != y0
            if bool(hit.any()):
                found = hit.nonzero().flatten()
                ok = valid_examples(x0[found], adv[found], top[found], self.norm, self.target.bounds)
                if grad_target is not self.target:
                    ok &= self.target.labels(adv[found]) != y0[found]
                found = found[ok]
                dist = torch.minimum(lp_norm(adv[found] - x0[found], self.norm), top[found])
                self.accept(idx[found], adv[found], dist)
                self._shrink(idx[found], torch.full_like(found, self.k - 1))
                keep = ~hit
                idx, x0, y0, adv, top, step = idx[keep], x0[keep], y0[keep], adv[keep], top[keep], step[keep]
                grad = None if grad is None else grad[keep]
                if len(idx) == 0:
                    return
            if grad is None:
                return
            adv = (x0 + project(adv + ascent_step(grad, step, self.norm) - x0, top, self.norm)).clamp(lo, hi)

    def record(self, idx: torch.Tensor, probe: torch.Tensor, x_adv: torch.Tensor,
               claimed: torch.Tensor | None = None) -> torch.Tensor:
        """Judge the attack's answers for samples `idx` probed at eps indices `probe`; return the fooled mask.
        `claimed` (optional): the attack's own verdict on this target; only its claimed successes are re-judged."""
        x0, y0 = self.x[idx], self.y[idx]
        eps = self.eps[probe]
        if claimed is None:
            fooled = self.target.labels(x_adv.float()) != y0
        else:
            fooled = torch.zeros_like(claimed)
            sel = claimed.nonzero().flatten()
            if len(sel):
                fooled[sel] = self.target.labels(x_adv[sel].float()) != y0[sel]
        valid = valid_examples(x0, x_adv, eps, self.norm, self.target.bounds)
        self.violations += int((fooled & ~valid).sum())
        fooled &= valid
        self.robust_upto[idx[~fooled]] = torch.maximum(self.robust_upto[idx[~fooled]], probe[~fooled])
        hit = fooled.nonzero().flatten()
        if len(hit):
            # an example accepted within eps (up to float32 rounding) counts as at most eps
            dist = torch.minimum(lp_norm(x_adv[hit].float() - x0[hit], self.norm), eps[hit])
            self.accept(idx[hit], x_adv[hit].float(), dist)
            self._shrink(idx[hit], probe[hit])
        return fooled

    def accept(self, idx: torch.Tensor, x_adv: torch.Tensor, dist: torch.Tensor) -> None:
        better = dist < self.dist[idx]
        self.dist[idx[better]] = dist[better]
        self.adv[idx[better]] = x_adv[better]

    def _shrink(self, idx: torch.Tensor, probe: torch.Tensor) -> None:
        """Project each new example's perturbation onto the smaller grid balls (forward passes only); keep the
        smallest that fools. Projections onto an L∞ or L2 ball keep x + δ inside the bounds (coordinates move
        towards x); L1 soft-thresholding does too."""
        below = int(probe.max())
        if below <= 0:
            return
        x0, delta = self.x[idx], self.adv[idx] - self.x[idx]
        grid = self.eps[:below]  # (m,)
        usable = grid[None, :] < self.dist[idx][:, None]
        rows, cols = usable.nonzero(as_tuple=True)
        if len(rows) == 0:
            return
        cand = x0[rows] + project(delta[rows], grid[cols], self.norm)
        fooled = self.target.labels(cand) != self.y[idx[rows]]
        valid = valid_examples(x0[rows], cand, grid[cols], self.norm, self.target.bounds)
        ok = fooled & valid
        if not bool(ok.any()):
            return
        # the smallest fooling grid point per sample: scatter-min of the column index over the fooling rows
        first = torch.full((len(idx),), below, dtype=torch.long, device=idx.device)
        first = first.scatter_reduce(0, rows[ok], cols[ok], reduce="amin")
        sel = (ok & (cols == first[rows])).nonzero().flatten()
        order = rows[sel]
        dist = torch.minimum(lp_norm(cand[sel].float() - x0[order], self.norm), grid[cols[sel]])
        self.accept(idx[order], cand[sel].float(), dist)

    def robust_mask(self, k: int) -> torch.Tensor:
        """Samples counted robust at eps index k: correctly classified and no valid example within eps_k."""
        return self.correct & (self.dist > self.eps[k] * (1 + 1e-5) + 1e-7)

    def curve(self) -> list[dict]:
        return [{"eps": e, "robust_accuracy": float(self.robust_mask(i).float().mean())}
                for i, e in enumerate(self.eps_values)]


def valid_examples(x: torch.Tensor, x_adv: torch.Tensor, eps: torch.Tensor | float, norm: str,
                   bounds: tuple[float, float], rtol: float = 1e-5) -> torch.Tensor:
    """Mask of adversarial examples that are finite, inside the bounds and within eps (checked in float32).

    An invalid example never counts as a success: a bug in an attack cannot make a model look weaker."""
    x, x_adv = x.float(), x_adv.float()
    flat = x_adv.flatten(1)
    finite = torch.isfinite(flat).all(dim=1)
    inside = (flat >= bounds[0] - 1e-6).all(dim=1) & (flat <= bounds[1] + 1e-6).all(dim=1)
    eps = torch.as_tensor(eps, dtype=torch.float32, device=x.device)
    within = lp_norm(x_adv - x, norm) <= eps * (1 + rtol) + 1e-7
    return finite & inside & within
