"""Shared machinery of evasion attacks: fixed-epsilon attacks and minimum-norm attacks.

`EvasionAttack.run` evaluates a target at several epsilons in one call and shares the work between them (see
`search.EpsSearch`): subclasses implement `perturb(target, x, y, eps)` with a per-sample epsilon tensor.
`MinNormAttack` subclasses implement `minimize(target, x, y, stop)`: one run gives the smallest perturbation found
per sample, from which the robust accuracy at every epsilon follows (each example re-checked in float32).
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from bastion.attacks.base import Attack
from bastion.attacks.evasion.norms import check_norm, lp_norm, project
from bastion.attacks.evasion.search import EpsSearch, valid_examples
from bastion.core.data import Dataset
from bastion.core.errors import BudgetSpent, ParameterError
from bastion.core.results import Result
from bastion.core.target import Access, Target

__all__ = ["EvasionAttack", "MinNormAttack", "parse_eps", "valid_examples", "as_eps"]


def parse_eps(eps: float | str | Sequence[float]) -> list[float]:
    """Accept 0.1, "0.05,0.1" or [0.05, 0.1]; return a sorted list of distinct positive floats."""
    if isinstance(eps, str):
        try:
            eps = [float(e) for e in eps.split(",") if e.strip()]
        except ValueError:
            raise ParameterError(f"epsilons must be numbers, got {eps!r}") from None
    elif isinstance(eps, (int, float)):
        eps = [float(eps)]
    values = sorted({float(e) for e in eps})
    if not values or any(not np.isfinite(e) or e <= 0 for e in values):
        raise ParameterError(f"epsilons must be positive and finite, got {eps}")
    return values


def as_eps(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample epsilon tensor of shape (n,) on x's device."""
    e = torch.as_tensor(eps, dtype=torch.float32, device=x.device)
    return e.expand(len(x)).contiguous() if e.dim() == 0 else e


def clip_to(x: torch.Tensor, target: Target) -> torch.Tensor:
    return x.clamp(target.bounds[0], target.bounds[1])


class EvasionAttack(Attack):
    """Base of fixed-epsilon attacks. `max_eps_fraction` refuses epsilons that exceed the input range."""

    family: ClassVar[str] = "evasion"
    requires: ClassVar[Access] = Access.GRADIENTS
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1")
    prepass: ClassVar[bool] = True  # white-box iterative attacks: the cheap minimum-norm pass before several eps
    budget_batch: ClassVar[int] = 64  # samples per batch when a query budget or deadline may stop the run

    def __init__(self, eps: float | str | Sequence[float] = 8 / 255, *, norm: str = "linf", seed: int = 0):
        self.eps = parse_eps(eps)
        self.norm = check_norm(norm)
        if self.norm not in self.norms:
            raise ParameterError(f"{self.name} supports the norms {', '.join(self.norms)}, not {self.norm}")
        self.seed = int(seed)

    def validate_eps(self, target: Target) -> None:
        """Refuse an epsilon that covers the whole input range: the result would mean nothing."""
        lo, hi = target.bounds
        dim = int(np.prod(target.input_shape))
        full = (hi - lo) * {"linf": 1.0, "l2": dim ** 0.5, "l1": float(dim)}[self.norm]
        if max(self.eps) >= full:
            raise ParameterError(f"eps {max(self.eps):g} ({self.norm}) spans the whole input range ({full:g}): "
                                 "every input is reachable")

    @abstractmethod
    def perturb(self, target: Target, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        """Adversarial versions of x within the per-sample `eps` (the best iterate per sample)."""
        ...

    def perturb_judged(self, target: Target, x: torch.Tensor, y: torch.Tensor,
                       eps: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`perturb`, plus the attack's own verdict per sample (True: fooled) when it judged its answers on this
        same target, else None. The search then re-judges only the claimed successes: a claimed failure costs
        no second forward pass, and a claimed success still counts only if the target confirms it."""
        return self.perturb(target, x, y, eps), None

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the attack's seed: the same draws on every device."""
        return torch.Generator().manual_seed(self.seed + offset)

    def prepare(self, target: Target, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_access(target)
        self.validate_eps(target)
        if data.y.max() >= target.n_classes:
            raise ParameterError(f"labels go up to {int(data.y.max())} but the model has {target.n_classes} classes")
        x = torch.as_tensor(data.x, dtype=torch.float32, device=target.device)
        y = torch.as_tensor(data.y, dtype=torch.long, device=target.device)
        return x, y

    def batched(self, target: Target, x: torch.Tensor, y: torch.Tensor,
                part: Callable[[torch.Tensor, torch.Tensor], EpsSearch]) -> EpsSearch:
        """`part(x, y)` on all samples at once; when a query budget or a deadline may stop the run, on batches of
        `budget_batch` samples, so that a stop keeps every finished batch: the search then covers the samples
        done and says why it stopped (`EpsSearch.stopped`; the result is partial). Nothing done: the error."""
        size = self.budget_batch
        if not target.counter.limited or len(x) <= size:
            return part(x, y)
        parts: list[EpsSearch] = []
        for start in range(0, len(x), size):
            try:
                parts.append(part(x[start:start + size], y[start:start + size]))
            except BudgetSpent as exc:
                if not parts:
                    raise
                return EpsSearch.join(parts, f"{exc}: {start} of {len(x)} samples attacked")
        return EpsSearch.join(parts)

    def search(self, target: Target, x: torch.Tensor, y: torch.Tensor) -> EpsSearch:
        """Run the attack over all epsilons, sharing work between them; return the filled-in search."""
        white_box = self.requires >= Access.GRADIENTS and target.access >= Access.GRADIENTS

        def part(xs: torch.Tensor, ys: torch.Tensor) -> EpsSearch:
            search = EpsSearch(target, xs, ys, self.eps, self.norm)
            if search.k > 1 and self.prepass and white_box:
                search.prepass()
            self.probe(target, search)
            return search

        return self.batched(target, x, y, part)

    def probe(self, target: Target, search: EpsSearch) -> None:
        """Attack the undecided samples, each at its next epsilon, until every sample is decided."""
        for _ in range(search.k):  # each round settles a sample or lowers its eps index: at most k rounds
            probe = search.next_probe()
            if probe is None:
                break
            idx, k = probe
            search.record(idx, k, *self.perturb_judged(target, search.x[idx], search.y[idx], search.eps[k]))

    def run(self, target: Target, data: Dataset, **_: Any) -> Result:
        x, y = self.prepare(target, data)
        start, queries = time.perf_counter(), target.queries
        search = self.search(target, x, y)
        return self.result(target, search, start, queries)

    def result(self, target: Target, search: EpsSearch, start: float, queries: int,
               extra: dict[str, Any] | None = None, findings: list | None = None) -> Result:
        """The Result of a finished search: clean and robust accuracy per eps, success rates, and each
        sample's outcome (`samples`: correctly classified, and robust at each eps)."""
        clean = float(search.correct.float().mean())
        curve = search.curve()
        metrics: dict[str, Any] = {
            "clean_accuracy": clean,
            "robust_accuracy": curve,
            "attack_success_rate": [
                {"eps": c["eps"], "rate": (1 - c["robust_accuracy"] / clean) if clean > 0 else 0.0} for c in curve
            ],
            "n_samples": len(search.x),
            "norm": self.norm,
            "constraint_violations": search.violations,
        }
        metrics.update(extra or {})
        return Result(
            family=self.family,
            attack=self.name,
            params=self.get_params(),
            metrics=metrics,
            queries=target.queries - queries,
            seconds=time.perf_counter() - start,
            device=str(target.device),
            findings=list(findings or []),  # the evasion family judges the curve (bastion.families.evasion)
            samples={"eps": list(search.eps_values), "correct": search.correct.cpu().tolist(),
                     "robust": torch.stack([search.robust_mask(k) for k in range(search.k)], 1).cpu().tolist()},
            status="partial" if search.stopped else "complete",
            reason=search.stopped or "",
        )


class MinNormAttack(EvasionAttack):
    """Base of minimum-norm attacks (FAB, C&W, DeepFool, HopSkipJump).

    `minimize(target, x, y, stop)` returns, per sample, the adversarial example of smallest norm found (x itself
    where none was found). A sample leaves the active batch once its perturbation is at most `stop` (when given)
    or once the attack can no longer improve it. `eps` only sets the epsilons the robust accuracy is reported at.
    """

    @abstractmethod
    def minimize(self, target: Target, x: torch.Tensor, y: torch.Tensor,
                 stop: torch.Tensor | None = None) -> torch.Tensor:
        ...

    def perturb(self, target: Target, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        """Fixed-epsilon use (e.g. in a cascade): the minimal example, projected into the eps ball if larger."""
        eps = as_eps(eps, x)
        adv = self.minimize(target, x, y, stop=eps)
        return clip_to(x + project(adv - x, eps, self.norm), target)

    def run(self, target: Target, data: Dataset, **_: Any) -> Result:
        x, y = self.prepare(target, data)
        start, queries = time.perf_counter(), target.queries

        def part(xs: torch.Tensor, ys: torch.Tensor) -> EpsSearch:
            search = EpsSearch(target, xs, ys, self.eps, self.norm)
            idx = search.correct.nonzero().flatten()
            if len(idx):
                adv = self.minimize(target, xs[idx], ys[idx]).float()
                fooled = target.labels(adv) != ys[idx]
                valid = valid_examples(xs[idx], adv, float("inf"), self.norm, target.bounds)
                search.violations += int((fooled & ~valid).sum())
                hit = (fooled & valid).nonzero().flatten()
                search.accept(idx[hit], adv[hit], lp_norm(adv[hit] - xs[idx[hit]], self.norm))
            return search

        search = self.batched(target, x, y, part)
        dist = search.dist[search.correct]
        found = torch.isfinite(dist)
        extra = {
            "median_perturbation": float(dist.median()) if len(dist) else float("nan"),
            "median_perturbation_found": float(dist[found].median()) if bool(found.any()) else float("nan"),
            "unbounded_success_rate": float(found.float().mean()) if len(dist) else 0.0,
        }
        return self.result(target, search, start, queries, extra)
