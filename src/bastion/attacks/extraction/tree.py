"""Decision-tree extraction by path finding (Tramèr, Zhang, Juels, Reiter & Ristenpart, "Stealing Machine Learning
Models via Prediction APIs", USENIX Security 2016, Section 4.2).

Each leaf of an axis-aligned tree owns a box of the input space, and an API that reveals which leaf answered lets
the attacker trace the box's faces. Here the leaf's identity is the score vector the API returns, rounded to
`decimals` places. From a point x in leaf L, for each feature i the values of x_i (the other features fixed) that
keep leaf L form an interval: its two ends are binary-searched between x_i and the ends of the feature's range
(the pool's range where a pool is given, else the target's bounds) to a precision of `tol` times that range. The
2d searches of every box explored in a round advance together, one batched query per step. The query found just
beyond each face that is not the range's end lies in a neighbouring leaf, its answer already known: it is queued
and explored in a later round unless it falls in a box already found with the same scores. Exploration stops when
the queue is empty (`finished`), when the next round might overrun the budget (`budget`, or what is left of the
target's `max_queries`), or at `max_boxes`. A round explores up to `batch` boxes, at most one per score vector.

The copy answers, for an input, the log-scores of the found box that contains it, or of the nearest box (squared
distance) when none does. Its gradient is a straight-through surrogate that leaves the answers unchanged and pulls
each class's logit towards that class's nearest box, so that adversarial examples can be crafted on it.

Leaves with the same score vector merge: the search cannot tell them apart, so a search may cross a leaf of
other scores and stop in a far one, giving a box that covers more than one leaf (or leaves another uncovered),
and the leaf count is then not recoverable. A few shared vectors cost little, as merged leaves predict the same
class; many cost a lot (docs/benchmarks/extraction.md, 5 features, 4 classes): a depth-5 tree whose 32 leaves
have 28 distinct vectors is copied with fidelity 0.998, a depth-8 tree (125 leaves, 48 vectors) with 0.971, a
fully grown tree (388 pure leaves, 4 vectors) with 0.51, and a depth-5 tree behind one-hot scores with 0.63.

The attack assumes a single tree: a finite set of leaf score vectors, constant inside each leaf's box. After each
round one random point inside each new box is asked (one query per box); a tree answers there with the box's scores
or, where leaves share a score vector, another box's. When more than `max_inconsistent` of the boxes checked (at
least 20) answer with scores of no box found so far, the model is not a single tree (a random forest or boosted
ensemble averages many trees into score vectors no single box owns), exploration stops and the finding says so.
Exploration also stops at `deadline` seconds, with a progress bar of boxes found on a terminal.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from bastion.attacks.extraction.base import ExtractionAttack, feature_range
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.progress import progress
from bastion.core.registry import register
from bastion.core.target import Access, Target

MIN_CHECKED = 20  # boxes checked before the single-tree test may stop the exploration


class BoxCopy(nn.Module):
    """Predicts the log-scores of the box containing (else nearest to) each input."""

    def __init__(self, low: torch.Tensor, high: torch.Tensor, scores: torch.Tensor):
        super().__init__()
        self.register_buffer("low", low.float())
        self.register_buffer("high", high.float())
        self.register_buffer("logp", scores.float().clamp_min(1e-12).log())
        self.register_buffer("box_class", scores.argmax(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), 1, -1)
        gap = torch.relu(self.low - flat) + torch.relu(flat - self.high)  # (n, boxes, d)
        dist = gap.square().sum(dim=-1)
        out = self.logp[dist.argmin(dim=1)]
        classes = torch.arange(self.logp.shape[1], device=x.device)
        own = self.box_class.unsqueeze(1) == classes  # (boxes, classes)
        nearest = torch.where(own, dist.unsqueeze(-1), torch.inf).amin(dim=1)  # (n, classes)
        pull = torch.where(torch.isfinite(nearest), -nearest, 0.0)
        return out + (pull - pull.detach())


class BoxExplorer:
    """The state of one exploration: queue of points with known answers, and the boxes found so far."""

    def __init__(self, api: Target, low: torch.Tensor, high: torch.Tensor, tol: float, decimals: int,
                 batch: int, max_boxes: int):
        self.api, self.low, self.high = api, low, high
        self.tol = tol * (high - low)
        self.scale, self.batch, self.max_boxes = 10.0 ** decimals, batch, max_boxes
        self.steps = max(1, math.ceil(math.log2(1.0 / tol)))
        d, k = len(low), api.n_classes
        self.box_low, self.box_high = low.new_zeros(0, d), low.new_zeros(0, d)
        self.box_key, self.box_scores = torch.zeros(0, k, dtype=torch.long), low.new_zeros(0, k)
        self.queue_x, self.queue_key, self.queue_scores = low.new_zeros(0, d), self.box_key, self.box_scores
        self.spent, self.finished = 0, False
        self.checked, self.inconsistent, self.stopped = 0, 0, ""
        self.seen_keys = torch.zeros(0, k, dtype=torch.long)
        self.generator = torch.Generator().manual_seed(0)

    def ask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and leaf keys (scores rounded to integers) of flat float64 points."""
        scores = self.api.probabilities(x.float().reshape(len(x), *self.api.input_shape).to(self.api.device))
        self.spent += len(x)
        scores = scores.detach().to(self.low.device, torch.float64)
        key = torch.round(scores * self.scale).long()
        self.seen_keys = torch.unique(torch.cat([self.seen_keys, key]), dim=0)
        return scores, key

    def push(self, x: torch.Tensor, key: torch.Tensor, scores: torch.Tensor) -> None:
        self.queue_x = torch.cat([self.queue_x, x])
        self.queue_key = torch.cat([self.queue_key, key])
        self.queue_scores = torch.cat([self.queue_scores, scores])

    def covered(self) -> torch.Tensor:
        """Queued points inside (within tol) a found box with the same scores."""
        x = self.queue_x.unsqueeze(1)
        inside = ((x >= self.box_low - self.tol) & (x <= self.box_high + self.tol)).all(dim=-1)
        same = (self.queue_key.unsqueeze(1) == self.box_key).all(dim=-1)
        return (inside & same).any(dim=1)

    def check_boxes(self, first: int) -> None:
        """Ask one random point inside each box from index `first` on. A tree answers there with its seed's
        scores, or with those of another leaf already seen (merged leaves); an ensemble answers with new ones."""
        low, high = self.box_low[first:], self.box_high[first:]
        if len(low) == 0:
            return
        known = self.box_key
        u = torch.rand(low.shape, generator=self.generator, dtype=torch.float64)
        _, key = self.ask(low + (high - low) * u)
        novel = ~(key.unsqueeze(1) == known.unsqueeze(0)).all(dim=-1).any(dim=1)
        self.checked += len(low)
        self.inconsistent += int(novel.sum())

    def run(self, cap: int | None, deadline: float | None = None, max_inconsistent: float = 1.0,
            bar: Any = None) -> None:
        """Explore rounds until the queue empties, the next round could spend beyond `cap` queries, the
        `deadline` (a time.monotonic() value) passes or the boxes show the model is not a single tree."""
        per_box = 2 * len(self.low) * self.steps + 1
        while not self.stopped:
            keep = ~self.covered()
            self.queue_x, self.queue_key = self.queue_x[keep], self.queue_key[keep]
            self.queue_scores = self.queue_scores[keep]
            if len(self.queue_x) == 0:
                self.finished = True
                return
            room = self.batch if cap is None else min(self.batch, (cap - self.spent) // per_box)
            room = min(room, self.max_boxes - len(self.box_low))
            if room <= 0:
                return
            _, group = torch.unique(self.queue_key, dim=0, return_inverse=True)
            order = torch.arange(len(group))
            first = torch.full((int(group.max()) + 1,), len(group)).scatter_reduce(0, group, order, "amin")
            chosen = torch.zeros(len(group), dtype=torch.bool)
            chosen[first.sort().values[:room]] = True
            seeds, key = self.queue_x[chosen], self.queue_key[chosen]
            scores = self.queue_scores[chosen]
            self.queue_x, self.queue_key = self.queue_x[~chosen], self.queue_key[~chosen]
            self.queue_scores = self.queue_scores[~chosen]
            first = len(self.box_low)
            self.search(seeds, key, scores)
            self.check_boxes(first)
            if bar is not None:
                bar.advance(len(self.box_low) - first)
            if self.checked >= MIN_CHECKED and self.inconsistent > max_inconsistent * self.checked:
                self.stopped = "not a single tree"
            elif deadline is not None and time.monotonic() > deadline:
                self.stopped = "deadline"

    def search(self, x: torch.Tensor, key: torch.Tensor, scores: torch.Tensor) -> None:
        """Binary-search both ends of every feature's interval for each seed, all in one batch per step."""
        m, d = x.shape
        inner = x.unsqueeze(1).expand(m, 2, d).clone()  # last value known to keep the seed's leaf
        outer = torch.stack([self.low, self.high]).expand(m, 2, d).clone()  # first value known not to, or the end
        seen = torch.zeros(m, 2, d, dtype=torch.bool)
        out_key = torch.zeros(m, 2, d, key.shape[1], dtype=torch.long)
        out_scores = torch.zeros(m, 2, d, key.shape[1], dtype=torch.float64)
        for _ in range(self.steps):
            active = (outer - inner).abs() > self.tol
            if not active.any():
                break
            j, _, i = active.nonzero(as_tuple=True)
            mid = (inner[active] + outer[active]) / 2
            points = x[j].clone()
            points[torch.arange(len(j)), i] = mid
            answer, answer_key = self.ask(points)
            same = (answer_key == key[j]).all(dim=1)
            inner[active] = torch.where(same, mid, inner[active])
            outer[active] = torch.where(same, outer[active], mid)
            seen[active] |= ~same
            out_key[active] = torch.where(same.unsqueeze(1), out_key[active], answer_key)
            out_scores[active] = torch.where(same.unsqueeze(1), out_scores[active], answer)
        edge = torch.where(seen, (inner + outer) / 2, outer)
        self.box_low = torch.cat([self.box_low, edge[:, 0]])
        self.box_high = torch.cat([self.box_high, edge[:, 1]])
        self.box_key, self.box_scores = torch.cat([self.box_key, key]), torch.cat([self.box_scores, scores])
        j, side, i = seen.nonzero(as_tuple=True)
        beyond = x[j].clone()
        beyond[torch.arange(len(j)), i] = outer[j, side, i]
        self.push(beyond, out_key[j, side, i], out_scores[j, side, i])

    def copy(self) -> BoxCopy:
        return BoxCopy(self.box_low, self.box_high, self.box_scores).to(self.api.device)


@register("attacks", "tree", family="extraction")
class TreePathFinding(ExtractionAttack):
    """Tramèr's path-finding attack: the leaves of a decision tree, as boxes, from a score API.

    Reference: Tramèr et al., "Stealing Machine Learning Models via Prediction APIs", USENIX Security 2016, Section
    4.2.

    Example:
        >>> from bastion.attacks.extraction.tree import TreePathFinding
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> pool = load_dataset("pool.npz")
        >>> result = TreePathFinding().run(target, data, pool=pool)
        >>> result.metrics["fidelity"]
    """

    name = "tree"
    requires: ClassVar[Access] = Access.SCORES
    needs_pool: ClassVar[bool] = False
    budget_optional: ClassVar[bool] = True

    def __init__(self, budget: int | str | Sequence[int] | None = None, *, tol: float = 1e-3, decimals: int = 6,
                 starts: int = 1, batch: int = 32, max_boxes: int = 4096, deadline: float | None = 600.0,
                 max_inconsistent: float = 0.1, progress: bool = True, defense: str | None = None,
                 monitor: bool = True, ood_samples: int = 1000, transfer_eps: float = 0.1,
                 transfer_samples: int = 500, seed: int = 0):
        super().__init__(budget, defense=defense, monitor=monitor, ood_samples=ood_samples, transfer_eps=transfer_eps,
                         transfer_samples=transfer_samples, seed=seed)
        if deadline is not None and deadline <= 0 or not 0 <= max_inconsistent <= 1:
            raise ParameterError("deadline must be positive (seconds) and max_inconsistent in [0, 1]")
        self.deadline, self.max_inconsistent = deadline, float(max_inconsistent)
        self.progress = bool(progress)
        if not 0 < tol < 0.5:
            raise ParameterError(f"tol is a fraction of each feature's range in (0, 0.5), got {tol}")
        if decimals < 0 or starts < 1 or batch < 1 or max_boxes < 1:
            raise ParameterError("decimals must be >= 0 and starts, batch and max_boxes >= 1")
        self.tol, self.decimals, self.starts = float(tol), int(decimals), int(starts)
        self.batch, self.max_boxes = int(batch), int(max_boxes)

    def start_points(self, pool: Dataset | None, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """The pool's first points, else the centre of the range followed by uniform random points."""
        if pool is not None:
            flat = torch.as_tensor(pool.x[: self.starts], dtype=torch.float64).reshape(-1, len(low))
            return torch.minimum(torch.maximum(flat, low), high)
        rand = torch.rand(self.starts, len(low), generator=self.generator(), dtype=torch.float64)
        rand[0] = 0.5
        return low + (high - low) * rand

    def extract(self, api: Target, pool: Dataset | None, budgets: list[int]) -> Iterator[tuple[int, nn.Module]]:
        low, high = feature_range(api, pool)
        explorer = self.explorer_ = BoxExplorer(api, low, high, self.tol, self.decimals, self.batch,
                                                self.max_boxes)
        start = self.start_points(pool, low, high)
        need = len(start) + 2 * len(low) * explorer.steps
        limit = api.counter.remaining  # what is left of the target's own budget
        caps: list[int | None] = [b if limit is None else min(b, limit) for b in budgets] or [limit]
        if caps[0] is not None and caps[0] < need:
            raise ParameterError(f"path finding needs {need} queries for its first box; "
                                 f"the budget allows {caps[0]}")
        scores, key = explorer.ask(start)
        explorer.push(start, key, scores)
        deadline = None if self.deadline is None else time.monotonic() + self.deadline
        with progress(self.max_boxes, "tree: boxes found", self.progress) as bar:
            for budget, cap in zip(budgets or [None], caps, strict=True):
                explorer.run(cap, deadline, self.max_inconsistent, bar)
                yield (explorer.spent if budget is None else budget), explorer.copy()

    def extra_metrics(self) -> dict[str, Any]:
        explorer = self.explorer_
        boxes = len(explorer.box_low)
        return {"boxes": boxes, "distinct_scores": int(len(torch.unique(explorer.box_key, dim=0))),
                "queries_per_box": explorer.spent / boxes if boxes else None,
                "finished": explorer.finished, "search_steps": explorer.steps, "stopped": explorer.stopped or None,
                "boxes_checked": explorer.checked, "boxes_inconsistent": explorer.inconsistent,
                "assumption_holds": explorer.inconsistent <= self.max_inconsistent * max(explorer.checked, 1)}
