"""Auditing a DP claim with one training run (Steinke, Nasr and Jagielski, 2023, "Privacy Auditing with One (1)
Training Run", NeurIPS).

m canaries (records with a wrong label, the hardest case for a private learner) are each included in the training
set independently with probability 1/2, and the procedure is run once. The auditor guesses IN for the k canaries
with the highest scores (log-probability of their canary label) and OUT for the k lowest. If the procedure is
(eps, delta)-DP, the number of correct guesses W among r guesses satisfies (Steinke et al., Theorem 3.1)
P[W >= v] <= P[B >= v] + 2 m delta max_i P[v - i <= B < v] / i, with B ~ Binomial(r, e^eps / (1 + e^eps)). The
largest eps that this rejects at the chosen confidence is a lower bound on the true epsilon; several guess counts
are tried with a Bonferroni correction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.special import expit
from scipy.stats import binom
from torch import nn

from bastion.core.data import Dataset
from bastion.core.errors import DataError, ParameterError
from bastion.core.results import Result

from .base import check_int
from .references import estimator_log_probs, module_log_probs


def p_value(n_canaries: int, n_guesses: int, n_correct: int, epsilon: float, delta: float) -> float:
    """Probability that an (epsilon, delta)-DP procedure lets r guesses reach v correct (Steinke et al. 2023)."""
    q = float(expit(epsilon))
    beta = float(binom.sf(n_correct - 1, n_guesses, q))
    if delta == 0 or n_correct == 0:
        return beta
    i = np.arange(1, n_correct + 1)
    alpha = float(np.max((binom.sf(n_correct - i - 1, n_guesses, q) - beta) / i))
    return min(1.0, beta + 2 * n_canaries * delta * alpha)


def epsilon_lower_bound(n_canaries: int, n_guesses: int, n_correct: int, delta: float = 0.0,
                        significance: float = 0.05) -> float:
    """The largest epsilon rejected at `significance` by `n_correct` of `n_guesses` (0 when none is)."""
    if n_guesses == 0 or p_value(n_canaries, n_guesses, n_correct, 0.0, delta) > significance:
        return 0.0
    lo, hi = 0.0, 1.0
    while hi < 64 and p_value(n_canaries, n_guesses, n_correct, hi, delta) <= significance:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if p_value(n_canaries, n_guesses, n_correct, mid, delta) <= significance:
            lo = mid
        else:
            hi = mid
    return lo


def make_canaries(source: Dataset, n: int, n_classes: int, rng: np.random.Generator) -> Dataset:
    """n records of `source` with a random wrong label each."""
    if len(source) < n:
        raise DataError(f"{n} canaries need at least {n} source records, got {len(source)}")
    idx = rng.permutation(len(source))[:n]
    wrong = (source.y[idx] + rng.integers(1, n_classes, size=n)) % n_classes
    return Dataset(source.x[idx], wrong, "canaries")


def _log_probs(model: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    if isinstance(model, nn.Module):
        return module_log_probs(model, x)
    if hasattr(model, "predict_proba"):
        return estimator_log_probs(model, x, n_classes)
    return np.asarray(model(x), dtype=np.float64)  # a callable returning log-probabilities


class DPAudit:
    """One-run DP audit of a training procedure `train(x, y, seed) -> model` (Steinke et al. 2023).

    The model may be an nn.Module, a fitted scikit-learn estimator, or a function returning log-probabilities."""

    def __init__(self, n_canaries: int = 256, delta: float = 1e-5, confidence: float = 0.95,
                 guesses: Sequence[int] | None = None, seed: int = 0):
        self.n_canaries = check_int(n_canaries, "n_canaries", 2)
        self.delta = float(delta)
        self.confidence = float(confidence)
        self.guesses = sorted({int(g) for g in guesses}) if guesses else None
        self.seed = int(seed)
        if not 0 <= self.delta < 1 or not 0 < self.confidence < 1:
            raise ParameterError("delta must lie in [0, 1) and confidence in (0, 1)")

    def guess_counts(self) -> list[int]:
        counts = self.guesses or [g for g in (10, 20, 50, 100, 200, 500, 1000) if g <= self.n_canaries]
        if not counts or max(counts) > self.n_canaries or min(counts) < 2:
            raise ParameterError("guess counts must lie between 2 and the number of canaries")
        return counts

    def audit(self, scores: np.ndarray, included: np.ndarray) -> dict[str, Any]:
        """The epsilon lower bound from canary scores (higher = more likely IN) and their true inclusion."""
        order = np.argsort(-scores, kind="stable")
        counts = self.guess_counts()
        significance = (1 - self.confidence) / len(counts)
        rows = []
        for r in counts:
            top, bottom = order[: r // 2], order[len(order) - (r - r // 2):]
            correct = int(included[top].sum() + (~included[bottom]).sum())
            eps = epsilon_lower_bound(len(scores), r, correct, self.delta, significance)
            rows.append({"guesses": r, "correct": correct, "epsilon": eps})
        best = max(rows, key=lambda row: row["epsilon"])
        return {"epsilon_lower_bound": best["epsilon"], "best_guesses": best, "sweep": rows}

    def run(self, train: Callable[[np.ndarray, np.ndarray, int], Any], data: Dataset, canary_source: Dataset,
            claimed_epsilon: float | None = None) -> Result:
        """Insert canaries into `data`, train once, and bound epsilon from below. Without `claimed_epsilon`, the
        claim is the `epsilon` the procedure reports after training (a `TrainingProcedure` with DP-SGD does)."""
        start = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        n_classes = max(data.n_classes, canary_source.n_classes)
        canaries = make_canaries(canary_source, self.n_canaries, n_classes, rng)
        included = rng.random(self.n_canaries) < 0.5
        x = np.concatenate([data.x, canaries.x[included]])
        y = np.concatenate([data.y, canaries.y[included]])
        model = train(x, y, self.seed)
        if claimed_epsilon is None:
            claimed_epsilon = getattr(train, "epsilon", None)
        log_probs = _log_probs(model, canaries.x, n_classes)
        scores = log_probs[np.arange(self.n_canaries), canaries.y]
        metrics = {**self.audit(scores, included), "n_canaries": self.n_canaries, "n_included": int(included.sum()),
                   "delta": self.delta, "confidence": self.confidence, "claimed_epsilon": claimed_epsilon}
        return Result(family="privacy", attack="dp-audit", params=self.__dict__.copy(), metrics=metrics,
                            queries=self.n_canaries, seconds=time.perf_counter() - start, device="cpu")

