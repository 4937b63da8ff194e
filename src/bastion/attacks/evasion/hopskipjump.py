"""HopSkipJump (Chen, Jordan & Wainwright, IEEE S&P 2020): a label-only minimum-norm attack, L2 and L∞."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from bastion.attacks.evasion.base import MinNormAttack
from bastion.attacks.evasion.norms import lp_norm
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import Access, Target


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *[1] * (like.dim() - 1))


@register("attacks", "hopskipjump", family="evasion",
          summary="HopSkipJump, labels only, minimum norm (Chen 2020)")
class HopSkipJump(MinNormAttack):
    """HopSkipJump: walk along the decision boundary using only predicted labels.

    Start from a random misclassified point and binary-search to the boundary. Each of `steps` iterations
    (i) estimates the boundary's normal at the current point x_t from B_t = init_evals·√t label queries at
    x_t + δ_t·u_b (u_b random unit vectors, δ_t = √d·θ·dist for L2, d·θ·dist for L∞, θ = d^(−3/2) or d^(−2)),
    with the mean label subtracted as a baseline; (ii) steps along it (its sign for L∞) with a step
    ‖x_t − x‖/√t halved until the point is adversarial; (iii) binary-searches back to the boundary between x
    and that point (a blend for L2, an L∞-ball clip for L∞). Queries are batched over samples and directions.

    Reference: Chen, Jordan & Wainwright, "HopSkipJumpAttack: A Query-Efficient Decision-Based Attack", IEEE S&P 2020.

    Example:
        >>> from bastion.attacks.evasion.hopskipjump import HopSkipJump
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = HopSkipJump(eps=0.5).run(target, data)
        >>> result.metrics["robust_accuracy"]
    """

    name = "hopskipjump"
    requires = Access.LABELS
    norms = ("l2", "linf")

    def __init__(self, eps: float | str | Sequence[float] = 0.5, *, norm: str = "l2", steps: int = 40,
                 init_evals: int = 100, max_evals: int = 10000, init_tries: int = 100, seed: int = 0):
        super().__init__(eps, norm=norm, seed=seed)
        if steps < 1 or init_evals < 1 or max_evals < init_evals or init_tries < 1:
            raise ParameterError("HopSkipJump needs steps, init_evals, init_tries >= 1 and max_evals >= init_evals")
        self.steps, self.init_evals, self.max_evals, self.init_tries = (int(steps), int(init_evals),
                                                                        int(max_evals), int(init_tries))

    def _adv(self, target: Target, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return target.labels(x) != y

    def minimize(self, target: Target, x: torch.Tensor, y: torch.Tensor,
                 stop: torch.Tensor | None = None) -> torch.Tensor:
        gen = self.generator()
        n, dev = len(x), x.device
        d = x[0].numel()
        theta = d ** -1.5 if self.norm == "l2" else d ** -2.0
        stop = torch.zeros(n, device=dev) if stop is None else stop
        start, found = self._initial(target, x, y, gen)
        best = x.clone()
        idx = found.nonzero().flatten()
        if len(idx) == 0:
            return best
        cur = self._boundary(target, x[idx], start[idx], y[idx], theta)
        best[idx] = cur
        dist = lp_norm(cur - x[idx], self.norm)
        for t in range(1, self.steps + 1):
            keep = dist > stop[idx]
            if not bool(keep.any()):
                break
            idx, cur, dist = idx[keep], cur[keep], dist[keep]
            xs, ys = x[idx], y[idx]
            delta = (math.sqrt(d) if self.norm == "l2" else d) * theta * dist
            direction = self._normal(target, cur, ys, delta, min(int(self.init_evals * math.sqrt(t)), self.max_evals),
                                     gen)
            if self.norm == "linf":
                direction = direction.sign()
            step = dist / math.sqrt(t)
            moved = self._step(target, cur, ys, direction, step)
            nxt = self._boundary(target, xs, moved, ys, theta)
            nd = lp_norm(nxt - xs, self.norm)
            better = (nd < dist) & self._adv(target, nxt, ys)
            cur = torch.where(_view(better, cur), nxt, cur)
            dist = torch.where(better, nd, dist)
            best[idx] = cur
        return best

    def _initial(self, target: Target, x: torch.Tensor, y: torch.Tensor,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A uniformly random misclassified input per sample (up to `init_tries` draws); where noise never
        fools the model, another input of the batch that the model puts in a different class."""
        lo, hi = target.bounds
        start = x.clone()
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.init_tries):
            idx = (~found).nonzero().flatten()
            if len(idx) == 0:
                return start, found
            noise = lo + (hi - lo) * torch.rand((len(idx), *x.shape[1:]), generator=gen).to(x.device)
            hit = self._adv(target, noise, y[idx])
            start[idx[hit]] = noise[hit]
            found[idx[hit]] = True
        idx = (~found).nonzero().flatten()
        if len(idx):
            predicted = target.labels(x)
            other = predicted[None, :] != y[idx][:, None]  # (m, n): candidates of another class
            score = torch.rand(other.shape, generator=gen).to(x.device) * other
            pick = score.argmax(dim=1)
            ok = other.gather(1, pick[:, None]).squeeze(1)
            start[idx[ok]] = x[pick[ok]]
            found[idx[ok]] = True
        return start, found

    def _project(self, x: torch.Tensor, far: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The point between x (alpha = 0) and far (alpha = 1): a blend (L2) or an L∞-ball clip (L∞)."""
        if self.norm == "l2":
            a = _view(alpha, x)
            return (1 - a) * x + a * far
        radius = _view(alpha * lp_norm(far - x, "linf"), x)
        return x + torch.maximum(torch.minimum(far - x, radius), -radius)

    def _boundary(self, target: Target, x: torch.Tensor, far: torch.Tensor, y: torch.Tensor,
                  theta: float) -> torch.Tensor:
        """Binary search between x (correct) and far (adversarial): the adversarial point nearest the boundary."""
        lows = torch.zeros(len(x), device=x.device)
        highs = torch.ones(len(x), device=x.device)
        if self.norm == "l2":
            tol = torch.full_like(lows, theta)
        else:
            span = lp_norm(far - x, "linf").clamp_min(1e-12)
            tol = (theta / span).clamp(max=theta)
        for _ in range(64):
            todo = (highs - lows > tol).nonzero().flatten()
            if len(todo) == 0:
                break
            mid = (highs[todo] + lows[todo]) / 2
            hit = self._adv(target, self._project(x[todo], far[todo], mid), y[todo])
            highs[todo] = torch.where(hit, mid, highs[todo])
            lows[todo] = torch.where(hit, lows[todo], mid)
        return self._project(x, far, highs)

    def _normal(self, target: Target, cur: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, evals: int,
                gen: torch.Generator) -> torch.Tensor:
        """Monte-Carlo estimate of the direction towards the adversarial side at boundary points (unit norm)."""
        lo, hi = target.bounds
        m, shape = len(cur), cur.shape[1:]
        chunk = max(1, (1 << 22) // max(1, evals * cur[0].numel()))
        out = []
        for s in range(0, m, chunk):
            c, dl, ys = cur[s:s + chunk], delta[s:s + chunk], y[s:s + chunk]
            k = len(c)
            if self.norm == "l2":
                u = torch.randn((k, evals, *shape), generator=gen).to(c.device)
            else:
                u = (torch.rand((k, evals, *shape), generator=gen) * 2 - 1).to(c.device)
            u = u / u.flatten(2).norm(dim=2).clamp_min(1e-12).view(k, evals, *[1] * len(shape))
            dl_b = dl.view(k, 1, *[1] * len(shape))
            probe = (c[:, None] + dl_b * u).clamp(lo, hi)
            u = (probe - c[:, None]) / dl_b.clamp_min(1e-12)
            phi = self._adv(target, probe.flatten(0, 1), ys.repeat_interleave(evals)).view(k, evals).float() * 2 - 1
            mean = phi.mean(dim=1, keepdim=True)
            centred = torch.where((mean.abs() == 1), phi, phi - mean)
            v = (centred.view(k, evals, *[1] * len(shape)) * u).mean(dim=1)
            out.append(v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(k, *[1] * len(shape)))
        return torch.cat(out)

    def _step(self, target: Target, cur: torch.Tensor, y: torch.Tensor, direction: torch.Tensor,
              step: torch.Tensor) -> torch.Tensor:
        """Geometric step-size search: halve until cur + step·direction is adversarial (at most 25 halvings)."""
        lo, hi = target.bounds
        out = cur.clone()
        todo = torch.arange(len(cur), device=cur.device)
        size = step.clone()
        for _ in range(25):
            cand = (cur[todo] + _view(size[todo], cur[todo]) * direction[todo]).clamp(lo, hi)
            hit = self._adv(target, cand, y[todo])
            out[todo[hit]] = cand[hit]
            todo = todo[~hit]
            if len(todo) == 0:
                break
            size[todo] = size[todo] / 2
        return out
