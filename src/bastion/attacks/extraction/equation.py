"""Equation-solving extraction of linear and logistic models (Tramèr, Zhang, Juels, Reiter & Ristenpart, "Stealing
Machine Learning Models via Prediction APIs", USENIX Security 2016, Section 4.1).

A (multinomial) logistic regression answers p = softmax(W·x + b), so log p_k = w_k·x + b_k − log Σ exp(...): each
answer fixes the logits up to a shift common to all classes. Centring the log-probabilities of each answer removes
that shift and gives K linear equations z_k = w_k·x + b_k in the parameters written in the gauge Σ_k w_k = 0, Σ_k
b_k = 0 (the form an L2-penalised fit returns). d + 1 queries in general position determine every class's parameters
at once: one linear system with K right-hand sides, solved in float64.

The default `axis` design queries the low corner of the input range and, for each feature, that corner with the
feature moved to its high end: a triangular, well-conditioned system. `random` queries uniform points (the paper's
choice). An answer with a zero probability (a saturated or rounded API), or a top probability of 1 to float64
precision, gives no (precise) equation: the point is moved halfway to an anchor (the pool's median, else the centre
of the range) and asked again, up to `retries` times (each an extra query); a score still zero after that is read as
half the smallest score the API returned. Recovery is exact up to the API's arithmetic: a model evaluated in float32
limits it to about 1e-5. Binary models are reported as w = w_1 − w_0, b = b_1 − b_0. Needs score access.

The attack assumes the API is logistic in its input. A pipeline that standardises first (StandardScaler then
LogisticRegression) still is: the scaling folds into W and b. Other models are not, and an answer saturated to a
probability of 1 carries no equation. So `checks` further queries at random convex combinations of the design points
test the solution: `assumption_holds` is false when the copy's centred log-scores miss the API's by more than
`tolerance` (relative to their spread) or answers saturated, and the finding then says the fidelity reflects the
attack's misfit (pass `--pool` with typical inputs to keep the queries where the model answers, or use
knockoff/copycat).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from bastion.attacks.extraction.base import ExtractionAttack, feature_range
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import Access, Target

MAX_REPORTED_PARAMETERS = 4096
SATURATED = 1e-12  # a probability this close to 1 leaves the other classes' log-scores without precision


def log_scores(api: Target, x: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (or logits) of the answers in float64, NaN where the API answered a zero score."""
    scores = api.logits(x).double() if api.output_kind == "logits" else api.probabilities(x).double().log()
    return torch.where(torch.isfinite(scores), scores, torch.full_like(scores, float("nan")))


def anchor(pool: Dataset | None, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Where retried points move: the pool's per-feature median (a typical input), else the range's centre."""
    if pool is None:
        return (low + high) / 2
    flat = torch.as_tensor(pool.x, dtype=torch.float64).reshape(len(pool), -1)
    return torch.minimum(torch.maximum(flat.median(dim=0).values, low), high)


def saturated(api: Target, logp: torch.Tensor) -> torch.Tensor:
    """Answers whose top probability is 1 to float64 precision (logits never lose the others' precision)."""
    if api.output_kind == "logits":
        return torch.zeros(len(logp), dtype=torch.bool)
    return torch.nan_to_num(logp, nan=-1e300).exp().amax(dim=1) >= 1 - SATURATED


@register("attacks", "equation", family="extraction")
class EquationSolving(ExtractionAttack):
    """Tramèr's equation solving: exact parameters of a logistic model from d + 1 score queries.

    Reference: Tramèr et al., "Stealing Machine Learning Models via Prediction APIs", USENIX Security 2016, Section
    4.1.

    Example:
        >>> from bastion.attacks.extraction.equation import EquationSolving
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> pool = load_dataset("pool.npz")
        >>> result = EquationSolving().run(target, data, pool=pool)
        >>> result.metrics["fidelity"]
    """

    name = "equation"
    requires: ClassVar[Access] = Access.SCORES
    needs_pool: ClassVar[bool] = False
    budget_optional: ClassVar[bool] = True

    def __init__(self, budget: int | str | Sequence[int] | None = None, *, design: str = "axis", retries: int = 8,
                 checks: int = 20, tolerance: float = 0.05, defense: str | None = None, monitor: bool = True,
                 ood_samples: int = 1000, transfer_eps: float = 0.1, transfer_samples: int = 500, seed: int = 0):
        super().__init__(budget, defense=defense, monitor=monitor, ood_samples=ood_samples, transfer_eps=transfer_eps,
                         transfer_samples=transfer_samples, seed=seed)
        if design not in ("axis", "random"):
            raise ParameterError(f"design must be axis or random, got {design!r}")
        if retries < 0 or checks < 0 or tolerance <= 0:
            raise ParameterError("retries and checks must be >= 0 and tolerance > 0")
        self.design, self.retries = design, int(retries)
        self.checks, self.tolerance = int(checks), float(tolerance)

    def queries_needed(self, api: Target) -> int:
        return int(np.prod(api.input_shape)) + 1

    def design_points(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """The d + 1 query points, flat, float64."""
        d = len(low)
        if self.design == "random":
            return low + (high - low) * torch.rand(d + 1, d, generator=self.generator(), dtype=torch.float64)
        points = low.repeat(d + 1, 1)
        points[1:] = torch.where(torch.eye(d, dtype=torch.bool), high, low)
        return points

    def extract(self, api: Target, pool: Dataset | None, budgets: list[int]) -> Iterator[tuple[int, nn.Module]]:
        need = self.queries_needed(api)
        if budgets and budgets[0] < need:
            raise ParameterError(f"equation solving needs d + 1 = {need} queries; the budget is {budgets[0]}")
        cap = budgets[0] if budgets else None
        low, high = feature_range(api, pool)
        x = self.design_points(low, high)
        shape, device = api.input_shape, api.device
        logp = log_scores(api, x.float().reshape(need, *shape).to(device)).cpu()
        spent, self.retried_ = need, 0
        centre = anchor(pool, low, high)
        for _ in range(self.retries):
            bad = (torch.isnan(logp).any(dim=1) | saturated(api, logp)).nonzero().flatten()
            if len(bad) == 0 or (cap is not None and spent + len(bad) > cap):
                break
            x[bad] = (x[bad] + centre) / 2
            logp[bad] = log_scores(api, x[bad].float().reshape(len(bad), *shape).to(device)).cpu()
            spent, self.retried_ = spent + len(bad), self.retried_ + len(bad)
        self.zero_scores_ = int(torch.isnan(logp).sum())
        if self.zero_scores_:
            smallest = logp[~torch.isnan(logp)].min() if (~torch.isnan(logp)).any() else torch.tensor(-700.0)
            logp = torch.where(torch.isnan(logp), smallest - np.log(2.0), logp)
        centred = logp - logp.mean(dim=1, keepdim=True)  # (n, K): logits in the gauge Σ_k = 0
        system = torch.cat([x.float().double(), torch.ones(need, 1, dtype=torch.float64)], dim=1)
        theta = torch.linalg.lstsq(system, centred, driver="gelsd").solution  # (d + 1, K)
        weights, bias = theta[:-1].T.contiguous(), theta[-1].contiguous()
        if api.n_classes == 2:
            self.weights_, self.bias_ = (weights[1:] - weights[:1]).numpy(), (bias[1:] - bias[:1]).numpy()
        else:
            self.weights_, self.bias_ = weights.numpy(), bias.numpy()
        self.saturated_ = int(saturated(api, logp).sum())
        copy = nn.Sequential(nn.Flatten(), nn.Linear(need - 1, api.n_classes))
        with torch.no_grad():
            copy[1].weight.copy_(weights.float())
            copy[1].bias.copy_(bias.float())
        if cap is None or spent + self.checks <= cap:
            spent += self.check_assumption(api, x, theta)
        else:
            self.residual_ = None
        yield spent, copy.to(device)

    def check_assumption(self, api: Target, design: torch.Tensor, theta: torch.Tensor) -> int:
        """Query `checks` random convex combinations of the design points (where the solution was fitted) and
        measure how far the solved logits miss the API's."""
        if self.checks == 0:
            self.residual_ = None
            return 0
        gen = torch.Generator().manual_seed(self.seed + 1)
        weights = -torch.rand(self.checks, len(design), generator=gen, dtype=torch.float64).log()  # Dirichlet(1)
        x = (weights / weights.sum(dim=1, keepdim=True)) @ design
        logp = log_scores(api, x.float().reshape(self.checks, *api.input_shape).to(api.device)).cpu()
        observed = logp - logp.mean(dim=1, keepdim=True)
        predicted = torch.cat([x.float().double(), torch.ones(self.checks, 1, dtype=torch.float64)], 1) @ theta
        usable = torch.isfinite(observed).all(dim=1) & ~saturated(api, logp)
        self.saturated_ += int((~usable).sum())
        if not usable.any():
            self.residual_ = float("inf")
            return self.checks
        spread = observed[usable].abs().max().clamp_min(1e-12)
        self.residual_ = float((predicted - observed)[usable].abs().max() / spread)
        return self.checks

    @property
    def assumption_holds(self) -> bool | None:
        """True when the answers are those of a logistic model (None when not checked)."""
        if self.residual_ is None:
            return None if not self.saturated_ else False
        return self.residual_ <= self.tolerance and not self.saturated_

    def extra_metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {"unknowns_per_class": int(self.weights_.shape[1]) + 1,
                                   "retried_queries": self.retried_, "zero_scores": self.zero_scores_,
                                   "saturated_answers": self.saturated_, "check_residual": self.residual_,
                                   "assumption_holds": self.assumption_holds}
        if self.weights_.size <= MAX_REPORTED_PARAMETERS:
            metrics["parameters"] = {"weights": self.weights_.tolist(), "bias": self.bias_.tolist()}
        return metrics
