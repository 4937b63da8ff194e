"""Shared machinery of membership inference: data checks, signals, ROC metrics with intervals, findings.

A membership attack scores every candidate record (higher = more likely a training member). The score itself is
the product; `MembershipAttack.run` turns member and non-member scores into the ROC, AUC and TPR at low FPR with
bootstrap intervals (never accuracy alone), the records most at risk, and a graded Finding.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from bastion.attacks.base import Attack
from bastion.core.data import Dataset, validate_for_model
from bastion.core.errors import BudgetSpent, DataError, ParameterError
from bastion.core.results import Result
from bastion.core.target import Access, Target
from bastion.evaluation.metrics import RocSummary, roc_summary


def logit_confidence(log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini et al.'s logit-scaled confidence log(p_y / (1 - p_y)), computed stably from log-probabilities.

    `log_probs` (..., n, C) may be logits or log-probabilities (the result is the same); `y` (n,)."""
    idx = y.expand(log_probs.shape[:-1]).unsqueeze(-1)
    true = log_probs.gather(-1, idx).squeeze(-1)
    others = log_probs.scatter(-1, idx, float("-inf")).logsumexp(-1)
    return true - others


def true_log_prob(log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p_y from (..., n, C) logits or log-probabilities: minus the cross-entropy loss."""
    lp = log_probs.log_softmax(-1)
    return lp.gather(-1, y.expand(lp.shape[:-1]).unsqueeze(-1)).squeeze(-1)


def target_log_probs(target: Target, x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Log-probabilities of a score-granting target (logits of probability-only targets are log-probs)."""
    with torch.no_grad():
        return target.logits(x).float().log_softmax(-1)


@dataclass
class MembershipData:
    """Candidate records (members first, then non-members) and a population pool of known non-members."""

    members: Dataset
    nonmembers: Dataset
    population: Dataset | None
    population_from_nonmembers: bool = False

    @property
    def x(self) -> np.ndarray:
        return np.concatenate([self.members.x, self.nonmembers.x])

    @property
    def y(self) -> np.ndarray:
        return np.concatenate([self.members.y, self.nonmembers.y])

    @property
    def n_members(self) -> int:
        return len(self.members)


def prepare_membership_data(target: Target, members: Dataset | None, nonmembers: Dataset | None,
                            population: Dataset | None, data: Dataset | None, need_population: bool,
                            seed: int) -> MembershipData:
    """Check the datasets against the target; split the non-members when a population is needed but missing.

    `data`, when given without a population, serves as the population pool."""
    if members is None or nonmembers is None:
        raise DataError("membership inference needs --members and --nonmembers datasets")
    population = population if population is not None else data
    for d in (members, nonmembers, population):
        if d is not None:
            validate_for_model(d, target.n_classes, target.input_shape)
    split = False
    if population is None and need_population:
        if len(nonmembers) < 4:
            raise DataError("too few non-members to split off a population pool: pass --population")
        order = np.random.default_rng(seed).permutation(len(nonmembers))
        half = len(nonmembers) // 2
        population = nonmembers.subset(order[:half], name="population (split from non-members)")
        nonmembers = nonmembers.subset(order[half:])
        split = True
    return MembershipData(members, nonmembers, population, split)


def split_dataset(data: Dataset, members: float = 0.25, nonmembers: float = 0.25,
                  seed: int = 0) -> tuple[Dataset, Dataset, Dataset]:
    """Split one dataset into (members, non-members, population) for a target you then train on `members`."""
    if members <= 0 or nonmembers <= 0 or members + nonmembers >= 1:
        raise ParameterError("member and non-member fractions must be positive and leave room for a population")
    order = np.random.default_rng(seed).permutation(len(data))
    a, b = int(members * len(data)), int((members + nonmembers) * len(data))
    if a == 0 or b == a or b == len(data):
        raise DataError(f"{data.name}: too few records ({len(data)}) to split three ways")
    return (data.subset(order[:a], "members"), data.subset(order[a:b], "nonmembers"),
            data.subset(order[b:], "population"))


def roc_points(fpr: np.ndarray, tpr: np.ndarray, n_negatives: int, n: int = 60) -> dict[str, list[float]]:
    """The ROC on a log-spaced FPR grid (from one false positive to 1), small enough for JSON and reports."""
    grid = np.unique(np.r_[0.0, np.logspace(np.log10(1.0 / n_negatives), 0.0, n)])
    best = np.maximum.accumulate(tpr)  # fpr is sorted; the best TPR at FPR <= each grid point
    idx = np.searchsorted(fpr, grid + 1e-12, side="right") - 1
    return {"fpr": grid.tolist(), "tpr": best[np.clip(idx, 0, None)].tolist()}


def most_at_risk(scores_members: np.ndarray, k: int = 10) -> list[dict[str, float]]:
    """The k members with the highest scores: the training records the attack exposes most."""
    order = np.argsort(-scores_members, kind="stable")[:k]
    return [{"index": int(i), "score": float(scores_members[i])} for i in order]


class MembershipAttack(Attack):
    """Base class: subclasses implement `score(target, data) -> (member scores, non-member scores, extra)`."""

    family: ClassVar[str] = "privacy"
    requires: ClassVar[Access] = Access.SCORES
    dataset_params: ClassVar[tuple[str, ...]] = ("members", "nonmembers", "population")
    needs_population: ClassVar[bool] = False
    # Records scored per chunk (half members, half non-members) when a query budget or a deadline may stop the
    # run, so that a stop keeps the chunks scored (the result is partial). Attacks whose scoring trains reference
    # models on each call (LiRA, RMIA, shadow models) set 0: they are not chunked, and a stop is an error.
    budget_batch: ClassVar[int] = 64

    def __init__(self, n_bootstrap: int = 200, *, seed: int = 0):
        self.n_bootstrap = check_int(n_bootstrap, "n_bootstrap", 0)
        self.seed = int(seed)

    @abstractmethod
    def score(self, target: Target, data: MembershipData) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        ...

    def run(self, target: Target, data: Dataset | None = None, members: Dataset | None = None,
            nonmembers: Dataset | None = None, population: Dataset | None = None, **_: Any) -> Result:
        self.check_access(target)
        mdata = prepare_membership_data(target, members, nonmembers, population, data, self.needs_population,
                                        self.seed)
        start, queries_before = time.perf_counter(), target.queries
        scores_m, scores_n, extra, stopped = self.scored(target, mdata)
        scores_m, scores_n = np.asarray(scores_m, np.float64), np.asarray(scores_n, np.float64)
        summary = roc_summary(scores_m, scores_n, n_bootstrap=self.n_bootstrap, seed=self.seed)
        self.summary_: RocSummary = summary
        self.scores_ = (scores_m, scores_n)
        metrics = summary.to_metrics()
        metrics.update({
            "n_members": len(scores_m),
            "n_nonmembers": len(scores_n),
            "fpr_resolution": 1.0 / len(scores_n),
            "most_at_risk": most_at_risk(scores_m),
            "roc": roc_points(summary.fpr, summary.tpr, len(scores_n)),
            "population_from_nonmembers": mdata.population_from_nonmembers,
            **extra,
        })
        return Result(
            family=self.family,
            attack=self.name,
            params=self.get_params(),
            metrics=metrics,
            queries=target.queries - queries_before,
            seconds=time.perf_counter() - start,
            device=str(target.device),
            samples={"member_scores": scores_m.tolist(), "nonmember_scores": scores_n.tolist()},
            status="partial" if stopped else "complete",
            reason=stopped,
        )

    def scored(self, target: Target, data: MembershipData) -> tuple[np.ndarray, np.ndarray, dict[str, Any], str]:
        """(member scores, non-member scores, extra metrics, why it stopped or ""): all records at once, or, when
        a budget or deadline may stop the run, in chunks of `budget_batch` records (members and non-members
        alike), keeping the chunks scored when it stops. Nothing of either side scored: the error."""
        half = self.budget_batch // 2
        if not target.counter.limited or half < 1 or len(data.x) <= self.budget_batch:
            return (*self.score(target, data), "")
        members, nonmembers = data.members, data.nonmembers
        parts: list[tuple[np.ndarray, np.ndarray, dict[str, Any]]] = []
        for start in range(0, max(len(members), len(nonmembers)), half):
            chunk = MembershipData(members.subset(slice(start, start + half)),
                                   nonmembers.subset(slice(start, start + half)), data.population,
                                   data.population_from_nonmembers)
            try:
                parts.append(self.score(target, chunk))
            except BudgetSpent as exc:
                m, n = (np.concatenate([p[i] for p in parts]) if parts else np.zeros(0) for i in (0, 1))
                if not len(m) or not len(n):
                    raise
                reason = (f"{exc}: {len(m)} of {len(members)} members and {len(n)} of {len(nonmembers)} "
                          "non-members scored")
                return m, n, self.merge_extra(m, n, [p[2] for p in parts], sizes(parts)), reason
        m, n = (np.concatenate([p[i] for p in parts]) for i in (0, 1))
        return m, n, self.merge_extra(m, n, [p[2] for p in parts], sizes(parts)), ""

    def merge_extra(self, scores_m: np.ndarray, scores_n: np.ndarray, extras: list[dict[str, Any]],
                    sizes: list[tuple[int, int]]) -> dict[str, Any]:
        """The extra metrics of chunked scoring (`sizes`: members and non-members of each chunk): those of a
        single chunk; else nothing (attacks with extra metrics recompute them from all the scores)."""
        return extras[0] if len(extras) == 1 else {}


def sizes(parts: list[tuple[np.ndarray, np.ndarray, dict[str, Any]]]) -> list[tuple[int, int]]:
    """Members and non-members scored in each chunk."""
    return [(len(m), len(n)) for m, n, _ in parts]


def check_int(value: Any, name: str, minimum: int) -> int:
    """An integer parameter at least `minimum`, or a ParameterError."""
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be an integer, got {value!r}") from None
    if out < minimum or out != float(value):
        raise ParameterError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return out
