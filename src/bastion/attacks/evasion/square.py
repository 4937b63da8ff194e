"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): score-based black box, L∞ and L2."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bastion.attacks.evasion.base import EvasionAttack, as_eps, clip_to
from bastion.attacks.evasion.losses import margin
from bastion.core.errors import ParameterError
from bastion.core.gradients import forward_logits
from bastion.core.registry import register
from bastion.core.target import Access, Target

SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # halving points for a 10,000-query budget


def square_fraction(p_init: float, i: int, n_queries: int) -> float:
    """The fraction of pixels a square covers at iteration i: p_init halved at the rescaled schedule points."""
    i = int(i * 10000 / n_queries)
    return p_init / 2 ** sum(i > point for point in SCHEDULE)


def as_image(x: torch.Tensor) -> torch.Tensor:
    """View inputs as (n, c, h, w): images stay, (n, h, w) gains a channel, vectors become one row."""
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x[:, None]
    return x.reshape(len(x), 1, 1, -1)


def window(n: int, h: int, w: int, size_h: int, size_w: int, gen: torch.Generator,
           device: torch.device) -> torch.Tensor:
    """A random axis-aligned window per sample, as a (n, 1, h, w) float mask."""
    top = torch.randint(0, h - size_h + 1, (n,), generator=gen).to(device)
    left = torch.randint(0, w - size_w + 1, (n,), generator=gen).to(device)
    rows = torch.arange(h, device=device)[None, :, None]
    cols = torch.arange(w, device=device)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + size_h)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + size_w)[:, None, None]))
    return inside[:, None].float()


def pyramid(size_h: int, size_w: int, device: torch.device) -> torch.Tensor:
    """The paper's L2 window pattern: Σ_{k ≥ ring} 1/(k+1)² over concentric rings, two halves of opposite sign."""
    r = (torch.arange(size_h, device=device) - (size_h - 1) / 2).abs()[:, None]
    c = (torch.arange(size_w, device=device) - (size_w - 1) / 2).abs()[None, :]
    ring = torch.maximum(r, c).floor().long()
    top = int(ring.max())
    weights = 1.0 / (torch.arange(top + 1, device=device, dtype=torch.float32) + 1) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # Σ_{k ≥ j} 1/(k+1)²
    eta = tail[ring]
    half = torch.ones_like(eta)
    half[size_h // 2:] = -1 if size_h > 1 else 1
    return eta * half


@register("attacks", "square", family="evasion",
          summary="Square Attack, scores only, L∞/L2 (Andriushchenko 2020)")
class Square(EvasionAttack):
    """Square Attack: random search with square-shaped updates, scores only (L∞, L2).

    Minimises the margin z_y − max_{j≠y} z_j (log-probabilities when the target returns probabilities).
    L∞: start from vertical stripes of ±eps, then set a random square (side √(p·h·w), p halving on a fixed
    schedule) to ±eps per channel and keep the change when the margin drops. L2: move the mass of two squares into
    one, add a pyramid-shaped pattern, and rescale to the eps sphere. `queries` per sample (including the first);
    fooled samples leave the batch at once.

    Reference: Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial attack
    via random search", ECCV 2020.

    Example:
        >>> from bastion.attacks.evasion.square import Square
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = Square(eps=0.0314).run(target, data)
        >>> result.metrics["robust_accuracy"]
    """

    name = "square"
    requires = Access.SCORES
    norms = ("linf", "l2")

    def __init__(self, eps: float | str | Sequence[float] = 8 / 255, *, norm: str = "linf", queries: int = 5000,
                 p_init: float = 0.8, seed: int = 0):
        super().__init__(eps, norm=norm, seed=seed)
        if queries < 1 or not 0 < p_init <= 1:
            raise ParameterError("queries must be at least 1 and p_init in (0, 1]")
        self.queries, self.p_init = int(queries), float(p_init)

    def _margin(self, target: Target, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return margin(forward_logits(target, x), y)

    def perturb(self, target: Target, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        gen = self.generator()
        eps = as_eps(eps, x)
        img = as_image(x)
        n, ch, h, w = img.shape
        view = (-1, 1, 1, 1)
        e = eps.view(view)
        if self.norm == "linf":
            signs = torch.randint(0, 2, (n, ch, 1, w), generator=gen).to(x.device) * 2.0 - 1
            delta = signs.expand(n, ch, h, w) * e
        else:
            delta = self._l2_init(n, ch, h, w, gen, x.device, e)
        best = clip_to(img + delta, target)
        loss = self._margin(target, best.view_as(x), y)
        active = (loss >= 0).nonzero().flatten()
        for i in range(1, self.queries):
            if len(active) == 0:
                break
            p = square_fraction(self.p_init, i, self.queries)
            m = len(active)
            xa, ea = img[active], e[active]
            cur = best[active] - xa
            if h == 1:
                sh, sw = 1, min(max(int(round(p * w)), 1), w)
            else:
                side = min(max(int(round((p * h * w) ** 0.5)), 1), h - 1 if h > 1 else 1, w)
                sh = sw = side
            mask = window(m, h, w, sh, sw, gen, x.device)
            if self.norm == "linf":
                sign = torch.randint(0, 2, (m, ch, 1, 1), generator=gen).to(x.device) * 2.0 - 1
                same = ((cur == sign * ea) | (mask == 0)).flatten(2).all(dim=2).view(m, ch, 1, 1)
                sign = torch.where(same, -sign, sign)
                new = torch.where(mask.bool(), sign * ea, cur)
            else:
                new = self._l2_update(cur, mask, window(m, h, w, sh, sw, gen, x.device), sh, sw, gen, ea)
            cand = clip_to(xa + new, target)
            cand_loss = self._margin(target, cand.view(m, *x.shape[1:]), y[active])
            better = cand_loss < loss[active]
            best[active] = torch.where(better.view(view), cand, best[active])
            loss[active] = torch.where(better, cand_loss, loss[active])
            active = active[loss[active] >= 0]
        return best.view_as(x)

    def _l2_init(self, n: int, ch: int, h: int, w: int, gen: torch.Generator, device: torch.device,
                 e: torch.Tensor) -> torch.Tensor:
        """Tiles of pyramid patterns with random signs, scaled to the eps sphere."""
        side_h, side_w = max(1, h // 5), max(1, w // 5)
        tile = pyramid(side_h, side_w, device)
        reps = (-(-h // side_h), -(-w // side_w))
        base = tile.repeat(*reps)[:h, :w]
        signs = torch.randint(0, 2, (n, ch, reps[0], reps[1]), generator=gen).to(device) * 2.0 - 1
        signs = signs.repeat_interleave(side_h, 2).repeat_interleave(side_w, 3)[:, :, :h, :w]
        delta = base * signs
        return delta / delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1) * e

    def _l2_update(self, cur: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, sh: int, sw: int,
                   gen: torch.Generator, e: torch.Tensor) -> torch.Tensor:
        """Move the mass of window 2 into window 1, add a random pyramid there, rescale to the eps sphere."""
        m, ch, h, w = cur.shape
        union = torch.maximum(m1, m2)
        outside = cur * (1 - union)
        budget = (e.flatten() ** 2 - outside.flatten(1).pow(2).sum(1)).clamp_min(0).sqrt()
        pattern = pyramid(sh, sw, cur.device)
        if bool(torch.rand((), generator=gen) < 0.5):
            pattern = pattern.t() if sh == sw else pattern
        sign = torch.randint(0, 2, (m, ch, 1, 1), generator=gen).to(cur.device) * 2.0 - 1
        # place the pattern at window 1: index the window's coordinates through cumulative sums of the mask
        r = (m1.cumsum(2) - 1).clamp(0, sh - 1).long()
        c = (m1.cumsum(3) - 1).clamp(0, sw - 1).long()
        placed = pattern[r, c] * m1 * sign
        inside = cur * m1
        nu = placed / placed.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        mass = (cur * union).flatten(1).norm(dim=1).clamp_min(1e-3 * e.flatten()).view(-1, 1, 1, 1)
        content = inside + nu * mass
        scale = budget / content.flatten(1).norm(dim=1).clamp_min(1e-12)
        return outside + content * scale.view(-1, 1, 1, 1)
