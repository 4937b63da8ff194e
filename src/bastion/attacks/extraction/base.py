"""Shared machinery of extraction attacks: budgets, the query log, scoring copies, findings.

`ExtractionAttack.run(target, data, pool=...)` optionally puts an output defense in front of the target
(`defense="rounding:2"`), logs every attacker query, lets the subclass's `extract` produce one copy per budget
(queries are nested: the copy at budget b is built from the first b queries), scores each copy against the model
behind the API on `data`, and runs the PRADA detector over the attacker's query stream and over a benign stream
made of the evaluation data.
"""

from __future__ import annotations

import time
from abc import ABCMeta, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from bastion.attacks.base import Attack
from bastion.attacks.extraction.evaluate import Evaluation
from bastion.core.data import Dataset, validate_for_model
from bastion.core.errors import BudgetSpent, ParameterError
from bastion.core.results import Result
from bastion.core.target import Access, Target
from bastion.defenses.detect.prada import PRADA, QueryLog
from bastion.defenses.postprocess import harden, unwrap


def parse_budgets(budget: int | str | Sequence[int] | None) -> list[int]:
    """Accept 1000, "100,1000" or [100, 1000]; return sorted distinct positive integers (None: no budget, [])."""
    if budget is None:
        return []
    if isinstance(budget, str):
        budget = [b for b in budget.split(",") if b.strip()]
    elif isinstance(budget, (int, float, np.integer)):
        budget = [budget]
    try:
        values = sorted({int(b) for b in budget})
    except (TypeError, ValueError):
        raise ParameterError(f"budget must be whole numbers of queries, got {budget!r}") from None
    if not values or values[0] < 1:
        raise ParameterError(f"budgets must be positive, got {budget!r}")
    return values


def per_budget(rows: list[dict], key: str) -> Any:
    """One value for a single budget, else a list of {budget, key} (the `--json` contract)."""
    if len(rows) == 1:
        return rows[0][key]
    return [{"budget": r["budget"], key: r[key]} for r in rows]


def feature_range(api: Target, pool: Dataset | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature low and high ends (float64, CPU) of the attacker's input range: the pool's where a feature
    varies in it, else the target's bounds."""
    d = int(np.prod(api.input_shape))
    lo, hi = api.bounds
    low, high = torch.full((d,), lo, dtype=torch.float64), torch.full((d,), hi, dtype=torch.float64)
    if pool is not None:
        flat = torch.as_tensor(pool.x, dtype=torch.float64).reshape(len(pool), -1)
        varies = flat.amax(0) > flat.amin(0)
        low = torch.where(varies, flat.amin(0).clamp(lo, hi), low)
        high = torch.where(varies, flat.amax(0).clamp(lo, hi), high)
    return low, high


class ExtractionAttack(Attack, metaclass=ABCMeta):
    """Base class: subclasses implement `extract(api, pool, budgets)` yielding (budget, copy) pairs.

    `budget` is the attacker's query budget (a comma list builds one copy per budget, from nested queries).
    `defense` puts an output defense in front of the API (e.g. `rounding:2`, `top1`). `monitor` runs the PRADA
    detector over the attacker's query stream. `ood_samples` uniform inputs measure fidelity off the data.
    `transfer_samples` adversarial examples of size `transfer_eps` (L∞), crafted on the copy, measure transfer.
    """

    family: ClassVar[str] = "extraction"
    requires: ClassVar[Access] = Access.LABELS
    dataset_params: ClassVar[tuple[str, ...]] = ("pool",)
    needs_pool: ClassVar[bool] = True
    budget_optional: ClassVar[bool] = False  # True: `budget=None` means "as many queries as the attack needs"

    def __init__(self, budget: int | str | Sequence[int] | None = 1000, *, defense: str | None = None,
                 monitor: bool = True, ood_samples: int = 1000, transfer_eps: float = 0.1,
                 transfer_samples: int = 500, seed: int = 0):
        if budget is None and not self.budget_optional:
            raise ParameterError(f"extraction attack '{self.name}' needs a query budget")
        # None stays None, so that `type(self)(**self.get_params())` rebuilds the same attack
        self.budget = None if budget is None else parse_budgets(budget)
        if ood_samples < 0 or transfer_samples < 0 or transfer_eps < 0:
            raise ParameterError("ood_samples, transfer_samples and transfer_eps must be >= 0")
        self.defense, self.monitor = defense, bool(monitor)
        self.ood_samples, self.transfer_eps = int(ood_samples), float(transfer_eps)
        self.transfer_samples, self.seed = int(transfer_samples), int(seed)

    @abstractmethod
    def extract(self, api: Target, pool: Dataset | None, budgets: list[int]) -> Iterator[tuple[int, nn.Module]]:
        """Query `api` and yield a copy at each budget, in increasing order."""

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def run(self, target: Target, data: Dataset | None, pool: Dataset | None = None, **_: Any) -> Result:
        if data is None:
            raise ParameterError(f"extraction attack '{self.name}' needs --data to measure fidelity and accuracy")
        if pool is None and self.needs_pool:
            raise ParameterError(f"extraction attack '{self.name}' needs --pool: the inputs the attacker may query")
        api = harden(target, self.defense) if self.defense else target
        self.check_access(api)
        for dataset in (data, pool):
            if dataset is not None:
                validate_for_model(dataset, target.n_classes, target.input_shape)
        start = time.perf_counter()
        evaluation = Evaluation(unwrap(api), data, self.ood_samples, self.transfer_eps, self.transfer_samples,
                                seed=self.seed)
        log = self.query_log_ = QueryLog(api)
        before = api.queries
        rows, stopped = [], ""
        budgets = parse_budgets(self.budget)
        try:
            for budget, model in self.extract(log, pool, budgets):
                rows.append({"budget": budget, "queries": len(log), **evaluation.score(model)})
                self.substitute_ = model
        except BudgetSpent as exc:  # the target's budget or the deadline: keep the copies made before it
            if not rows:
                raise
            total = f" of {len(budgets)}" if budgets else ""
            stopped = (f"{exc}: copies at {len(rows)}{total} budget points "
                       f"({', '.join(str(r['budget']) for r in rows)})")
        metrics: dict[str, Any] = {key: per_budget(rows, key)
                                   for key in ("fidelity", "fidelity_ood", "accuracy", "transfer_success")}
        metrics.update(curve=rows, victim_accuracy=evaluation.victim_accuracy, access=log.access.name.lower(),
                       defense=api.name if self.defense else None, evaluation_queries=evaluation.queries,
                       n_samples=len(data))
        if self.defense:
            metrics["api_accuracy"] = evaluation.accuracy_of(api)
        metrics.update(self.extra_metrics())
        if self.monitor:
            metrics["prada"] = self._monitor(log, evaluation)
        return Result(family=self.family, attack=self.name, params=self.get_params(), metrics=metrics,
                            queries=api.queries - before, seconds=time.perf_counter() - start,
                            device=str(target.device),
                            status="partial" if stopped else "complete", reason=stopped)

    def extra_metrics(self) -> dict[str, Any]:
        """Attack-specific metrics added after the copies are scored."""
        return {}

    def _monitor(self, log: QueryLog, evaluation: Evaluation) -> dict[str, Any]:
        detector = PRADA()
        attack = detector.detect_log(log).to_dict()
        benign = detector.detect(evaluation.x.reshape(len(evaluation.x), -1), evaluation.victim_labels)
        return {**attack, "benign_stream_flagged": benign.detected, "benign_stream_queries": benign.n_queries}
