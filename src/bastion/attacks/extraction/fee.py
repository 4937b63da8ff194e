"""Functionally-equivalent extraction of a one-hidden-layer ReLU network (Jagielski, Carlini, Berthelot, Kurakin &
Papernot, "High Accuracy and High Fidelity Extraction of Neural Networks", USENIX Security 2020, Section 5).

The victim is f(x) = A·ReLU(W·x + b) + c. The attack, torch-native with float64 linear algebra:

1. Critical points: random lines through the input range (the pool's range when a pool is given, else the target's
   bounds) are searched for kinks, `lines` lines a round (`fee_search.find_kinks`).
2. Weights: at each critical point the gradient jump a_j·w_jᵀ gives the unit's output column and weight direction
   (`fee_search.gradient_jumps`). Critical points are grouped by unit (same normalised hyperplane [w, −w·x*] up
   to sign, same output direction a). A unit with at least d + 2 critical points gets its hyperplane w·x + b = 0
   by a least-squares fit through them (far more precise than finite differences through a float32 API);
   otherwise the group's mean direction is used and b follows from w·x* + b = 0.
3. Signs: the jump fixes w_j only up to sign, and ReLU(−z) = ReLU(z) − z, so a wrong sign changes f by an affine
   term. The output layer is solved by least squares with the features [ReLU(Ŵx + b̂), x, 1]; its linear part M
   equals −Σ_{j flipped} a_j·ŵ_jᵀ, and solving that for 0/1 indicators says which units to flip (the paper's
   "solve the output layer with both signs and keep the one that fits", for all units at once).
4. Output layer: A and c by least squares on the sign-corrected features (the scale of each row of W folds into
   A). An affine part left in the fit (units whose hyperplane misses the range are affine on it) is kept exactly
   by pairs of units ReLU(z) − ReLU(−z).

The API may answer logits (used as they are) or probabilities: then the attack works with log-probabilities
centred over the classes, which cancels the softmax's log-sum-exp, and the copy's logits equal the victim's up to
a per-input shift (identical probabilities). The number of hidden units is `hidden`, or, when None, found until a
round of `lines` lines brings no new unit. `fit_residual` (relative RMS error of the output-layer fit) is what the
attacker can check: near float32 precision for a one-hidden-layer ReLU network, large for anything else (a deeper
network's kinks do not lie on hyperplanes, and its copy is reported with that residual and lower fidelity).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from bastion.attacks.extraction.base import ExtractionAttack, feature_range
from bastion.attacks.extraction.fee_search import Kinks, OutOfQueries, find_kinks, gradient_jumps, line_ends
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import Access, Target

SAME_UNIT = 0.999  # cosine between two critical points' normalised hyperplanes (and output columns)
RANK_ONE = 0.02  # largest second/first singular value of a clean gradient jump
MAX_ROUNDS = 40
MAX_POINTS = 4096  # critical points kept; a one-hidden-layer network of h units needs about h·(d + 2)


class Prober:
    """Answers the API's piecewise-linear outputs in float64 and caps the queries spent."""

    def __init__(self, api: Target, cap: int | None):
        self.api, self.cap, self.start = api, cap, api.queries

    @property
    def spent(self) -> int:
        return self.api.queries - self.start

    def left(self, cost: int) -> int:
        """How many items of `cost` queries each the cap still allows."""
        return 1 << 62 if self.cap is None else max(0, self.cap - self.spent) // cost

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.cap is not None and self.spent + len(x) > self.cap:
            raise OutOfQueries
        if len(x) == 0:
            return x.new_zeros(0, self.api.n_classes)
        out = self.api.logits(x.float().reshape(len(x), *self.api.input_shape)).double()
        return out if self.api.output_kind == "logits" else out - out.mean(dim=1, keepdim=True)


def cluster(w: torch.Tensor, beta: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Group critical points by unit: label per point (greedy, largest group first)."""
    key = torch.cat([w, beta[:, None]], dim=1)
    key = key / key.norm(dim=1, keepdim=True)
    col = a / a.norm(dim=1, keepdim=True).clamp_min(1e-300)
    near = ((key @ key.T).abs() > SAME_UNIT) & (col @ col.T > SAME_UNIT)
    labels = torch.full((len(w),), -1, dtype=torch.long, device=w.device)
    for group in range(len(w)):
        free = labels < 0
        counts = (near & free[None]).sum(dim=1).masked_fill(~free, 0)
        if len(w) == 0 or int(counts.max()) < 2:  # the rest are single points: left unlabelled (-1)
            break
        labels[near[counts.argmax()] & free] = group
    return labels


def hyperplane(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """[w, b] with |w| = 1 for one unit's critical points x (m, d) and their direction estimates w (m, d).

    With d + 2 points or more, a trimmed least-squares plane through the points: start from the half nearest the
    plane of the mean direction, then twice refit on every point within 10 median distances of the last fit."""
    m, d = x.shape
    mean = (w * torch.where((w @ w[0]) < 0, -1.0, 1.0).to(w.dtype)[:, None]).mean(0)
    mean = mean / mean.norm()
    theta = torch.cat([mean, -(x @ mean).median()[None]])
    if m >= d + 2:
        design = torch.cat([x, torch.ones(m, 1, dtype=x.dtype, device=x.device)], dim=1)
        off = (design @ theta).abs()
        keep = off <= off.kthvalue(max(d + 2, (m + 1) // 2)).values
        for _ in range(3):
            fit = torch.linalg.svd(design[keep], full_matrices=False).Vh[-1]
            fit = fit / fit[:d].norm()
            off = (design @ fit).abs()
            keep = off <= 10 * off[keep].median() + 1e-12
            if keep.sum() < d + 2:
                break
        if (fit[:d] @ mean).abs() > 0.99:
            theta = fit
    return theta / theta[:d].norm()


def lstsq(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.linalg.lstsq(features.cpu(), targets.cpu(), driver="gelsd").solution.to(features.device)


def relu_net(w: torch.Tensor, b: torch.Tensor, out_w: torch.Tensor, out_b: torch.Tensor) -> nn.Module:
    net = nn.Sequential(nn.Flatten(), nn.Linear(w.shape[1], w.shape[0]), nn.ReLU(), nn.Linear(w.shape[0], len(out_b)))
    with torch.no_grad():
        for layer, weight, bias in ((net[1], w, b), (net[3], out_w, out_b)):
            layer.weight.copy_(weight.float())
            layer.bias.copy_(bias.float())
    return net


@register("attacks", "fee", family="extraction")
class FunctionallyEquivalentExtraction(ExtractionAttack):
    """Jagielski et al.'s functionally-equivalent extraction of a one-hidden-layer ReLU network from its scores.

    Reference: Jagielski et al., "High Accuracy and High Fidelity Extraction of Neural Networks", USENIX Security 2020,
    Section 5.

    Example:
        >>> from bastion.attacks.extraction.fee import FunctionallyEquivalentExtraction
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> pool = load_dataset("pool.npz")
        >>> result = FunctionallyEquivalentExtraction().run(target, data, pool=pool)
        >>> result.metrics["fidelity"]
    """

    name = "fee"
    requires: ClassVar[Access] = Access.SCORES
    needs_pool: ClassVar[bool] = False
    budget_optional: ClassVar[bool] = True

    def __init__(self, hidden: int | None = None, *, lines: int = 32, tol: float = 1e-5, segments: int = 64,
                 budget: int | str | Sequence[int] | None = None, defense: str | None = None,
                 monitor: bool = True, ood_samples: int = 1000, transfer_eps: float = 0.1,
                 transfer_samples: int = 500, seed: int = 0):
        super().__init__(budget, defense=defense, monitor=monitor, ood_samples=ood_samples, transfer_eps=transfer_eps,
                         transfer_samples=transfer_samples, seed=seed)
        if hidden is not None and int(hidden) < 1:
            raise ParameterError(f"hidden must be a positive number of units or None, got {hidden!r}")
        if lines < 1 or segments < 8:
            raise ParameterError("lines must be >= 1 and segments >= 8")
        if not 0 < tol < 0.1:
            raise ParameterError(f"tol must lie in (0, 0.1), got {tol}")
        self.hidden = None if hidden is None else int(hidden)
        self.lines, self.tol, self.segments = int(lines), float(tol), int(segments)

    def fit_points(self, d: int) -> int:
        """Queries reserved for the output layer: twice the unknowns of the sign fit, plus a margin."""
        return 2 * ((self.hidden or 64) + d + 1) + 16

    def extract(self, api: Target, pool: Dataset | None, budgets: list[int]) -> Iterator[tuple[int, nn.Module]]:
        low, high = (end.to(api.device) for end in feature_range(api, pool))
        d = len(low)
        self.plane_tol_ = 1e-4 * float((high - low).mean())
        reserve = self.fit_points(d)
        smallest = reserve + self.segments + 1
        if budgets and budgets[0] < smallest:
            raise ParameterError(f"fee needs more than {smallest} queries (one line and the output-layer fit); "
                                 f"the budget is {budgets[0]}")
        gen = torch.Generator().manual_seed(self.seed)
        probe = Prober(api, None)
        self.points_ = [low.new_zeros(0, d), low.new_zeros(0, d), low.new_zeros(0, api.n_classes)]  # x*, w, a
        self.rounds_, self.stopped_, quiet, units_before = 0, "rounds", 0, 0
        for budget in budgets or [None]:
            probe.cap = None if budget is None else budget - reserve
            try:
                while self.rounds_ < MAX_ROUNDS and len(self.points_[0]) < MAX_POINTS:
                    self.search(probe, gen, low, high)
                    labels = self.groups()
                    sizes = torch.bincount(labels[labels >= 0], minlength=1)
                    units = int((sizes >= d + 2).sum())
                    quiet, units_before = (quiet + 1 if units == units_before else 0), units
                    if self.done(sizes, quiet, d):
                        self.stopped_ = "done"
                        break
                    if self.rounds_ >= 3 and self.clustered_ < 0.5:
                        self.stopped_ = "critical points off any hyperplane"
                        break
            except OutOfQueries:  # the next batch would eat into the queries reserved for the output layer
                self.stopped_ = "budget"
            self.fit(api, probe, low, high, self.groups(), gen)
            yield probe.spent, self.copy_

    def search(self, probe: Prober, gen: torch.Generator, low: torch.Tensor, high: torch.Tensor) -> None:
        """One round: `lines` random lines, their critical points and the gradient jump at each."""
        d = len(low)
        lines = min(self.lines, probe.left(2 * (self.segments + 1)))  # leave room for the gradients
        if lines == 0:
            raise OutOfQueries
        u = low + (high - low) * torch.rand(lines, d, generator=gen, dtype=low.dtype).to(low.device)
        v = torch.randn(lines, d, generator=gen, dtype=low.dtype).to(low.device) * (high - low)
        v = v / v.norm(dim=1, keepdim=True)
        t0, t1 = line_ends(u, v, low, high)
        kinks = find_kinks(probe, u, v, t0, t1, self.segments, self.tol)
        good = (kinks.left > 0) & (kinks.right > 0)
        good = good & (good.cumsum(0) <= probe.left(2 * d + 2))  # as many as the budget allows
        kinks = Kinks(kinks.x[good], kinks.line[good], kinks.left[good], kinks.right[good])
        self.rounds_ += 1
        if len(kinks.x):
            a, w, ratio = gradient_jumps(probe, kinks, v)
            clean = ratio < RANK_ONE
            for i, new in enumerate((kinks.x[clean], w[clean], a[clean])):
                self.points_[i] = torch.cat([self.points_[i], new])

    def groups(self) -> torch.Tensor:
        """Unit label per critical point (-1: none). Groups of d + 2 points or more get a fitted hyperplane, and
        every point within `plane_tol_` of one (with the same output direction) joins it: positions are far more
        precise than finite-difference directions, which split a unit into small groups now and then."""
        x, w, a = self.points_
        d = x.shape[1]
        labels = cluster(w, -(w * x).sum(-1), a)
        sizes = torch.bincount(labels[labels >= 0], minlength=1)
        big = (sizes >= d + 2).nonzero().flatten()
        if len(big):
            planes = torch.stack([hyperplane(x[labels == g], w[labels == g]) for g in big])
            cols = torch.stack([a[labels == g].mean(0) for g in big])
            cols = cols / cols.norm(dim=1, keepdim=True).clamp_min(1e-300)
            dist = (x @ planes[:, :d].T + planes[:, d]).abs()
            same = (a / a.norm(dim=1, keepdim=True).clamp_min(1e-300)) @ cols.T > 0.99
            dist = torch.where(same, dist, torch.inf)
            nearest = dist.min(dim=1)
            labels = torch.where(nearest.values <= self.plane_tol_, big[nearest.indices], labels)
        self.clustered_ = float((labels >= 0).double().mean()) if len(labels) else 0.0
        return labels

    def done(self, sizes: torch.Tensor, quiet: int, d: int) -> bool:
        if self.hidden is not None:
            top = sizes.sort(descending=True).values[:self.hidden]
            return len(top) == self.hidden and bool((top >= d + 2).all())
        return quiet >= 1 and bool((sizes >= d + 2).any())

    def fit(self, api: Target, probe: Prober, low: torch.Tensor, high: torch.Tensor, labels: torch.Tensor,
            gen: torch.Generator) -> None:
        """Steps 2-4 on the critical points found so far; sets `copy_`."""
        x, w, _ = self.points_
        d = len(low)
        sizes = torch.bincount(labels[labels >= 0], minlength=1)
        order = sizes.argsort(descending=True)
        enough = d + 2 if self.hidden is None and bool((sizes >= d + 2).any()) else 2
        order = order[sizes[order] >= enough][:self.hidden]
        if len(order) == 0:
            raise ParameterError(f"fee found no hidden unit in {probe.spent} queries; raise the budget or lines")
        theta = torch.stack([hyperplane(x[labels == g], w[labels == g]) for g in order])
        h = len(order)
        n = 2 * (h + d + 1) + 16
        if self.fit_x_ is None or len(self.fit_x_) < n:
            extra = low + (high - low) * torch.rand(n - (0 if self.fit_x_ is None else len(self.fit_x_)), d,
                                                    generator=gen, dtype=low.dtype).to(low.device)
            extra = extra.float().double()
            probe.cap = None
            answers = probe(extra)
            self.fit_x_ = extra if self.fit_x_ is None else torch.cat([self.fit_x_, extra])
            self.fit_y_ = answers if self.fit_y_ is None else torch.cat([self.fit_y_, answers])
        fx, fy = self.fit_x_, self.fit_y_
        ones = torch.ones(len(fx), 1, dtype=fx.dtype, device=fx.device)
        hidden = torch.relu(fx @ theta[:, :d].T + theta[:, d])
        coef = lstsq(torch.cat([hidden, fx, ones], dim=1), fy)  # (h + d + 1, K)
        linear, out = coef[h:h + d], coef[:h]  # M is linear.T
        basis = (theta[:, :d, None] * out[:, None, :]).reshape(h, -1).T  # columns vec(ŵ_j a_jᵀ)
        flips = lstsq(basis, -linear.reshape(-1, 1)).flatten()
        self.sign_margin_ = float((flips - 0.5).abs().min())
        theta = theta * torch.where(flips > 0.5, -1.0, 1.0).to(theta.dtype)[:, None]
        hidden = torch.relu(fx @ theta[:, :d].T + theta[:, d])
        coef = lstsq(torch.cat([hidden, fx, ones], dim=1), fy)
        out, linear, bias = coef[:h], coef[h:h + d], coef[-1]
        fitted = torch.cat([hidden, fx, ones], dim=1) @ coef
        scale = (fy - fy.mean(0)).norm().clamp_min(1e-300)
        self.fit_residual_ = float((fy - fitted).norm() / scale)
        weights, biases, columns = theta[:, :d], theta[:, d], out.T
        u_, s, vh = torch.linalg.svd(linear.T, full_matrices=False)  # affine part kept by ReLU(z) - ReLU(-z)
        keep = s * (high - low).norm() > 100 * self.tol * fy.square().mean().sqrt()
        self.affine_units_ = 2 * int(keep.sum())
        if keep.any():
            v_, cols = vh[keep], u_[:, keep] * s[keep]
            weights = torch.cat([weights, v_, -v_])
            biases = torch.cat([biases, biases.new_zeros(2 * len(v_))])
            columns = torch.cat([columns, cols, -cols], dim=1)
        self.units_, self.weights_, self.biases_ = h, theta[:, :d], theta[:, d]
        self.copy_ = relu_net(weights, biases, columns, bias).to(api.device)

    def run(self, target: Target, data: Dataset | None, pool: Dataset | None = None, **kw: Any):
        self.fit_x_ = self.fit_y_ = None
        return super().run(target, data, pool, **kw)

    def extra_metrics(self) -> dict[str, Any]:
        return {"units": self.units_, "affine_units": self.affine_units_, "rounds": self.rounds_,
                "lines": self.rounds_ * self.lines, "critical_points": len(self.points_[0]),
                "clustered": self.clustered_, "stopped": self.stopped_, "fit_residual": self.fit_residual_,
                "sign_margin": self.sign_margin_, "one_hidden_layer": self.fit_residual_ < 1e-3}
