"""Equation-solving extraction of linear and logistic models (Tramèr, Zhang, Juels, Reiter & Ristenpart,
"Stealing Machine Learning Models via Prediction APIs", USENIX Security 2016, Section 4.1).

A (multinomial) logistic regression answers p = softmax(W·x + b). Each answer gives K − 1 linear equations in
the parameters: log p_k − log p_0 = (w_k − w_0)·x + (b_k − b_0). So d + 1 queries in general position determine
every class's parameters (up to the common shift that softmax ignores) by solving one linear system, in float64.
The default `axis` design queries the low corner of the input range and, for each feature, that corner with the
feature moved to its high end: a triangular, well-conditioned system. `random` queries uniform points (the
paper's choice). Recovery is exact up to the API's arithmetic: a model evaluated in float32 limits it to about
1e-5. Recovered parameters are reported in canonical form: binary: w = w_1 − w_0, b = b_1 − b_0; multinomial:
rows centred to sum to zero (the form an L2-penalised fit returns). Needs score access.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from bastion.attacks.extraction.base import ExtractionAttack
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import Access, Target

MAX_REPORTED_PARAMETERS = 4096


def log_ratios(api: Target, x: torch.Tensor) -> torch.Tensor:
    """log p_k − log p_0 for k = 1..K−1, in float64 (from logits when the API returns them)."""
    if api.output_kind == "logits":
        scores = api.logits(x).double()
    else:
        scores = api.probabilities(x).double().clamp_min(1e-300).log()
    return scores[:, 1:] - scores[:, :1]


@register("attacks", "equation", family="extraction")
class EquationSolving(ExtractionAttack):
    """Tramèr's equation solving: exact parameters of a logistic model from d + 1 score queries."""

    name = "equation"
    requires: ClassVar[Access] = Access.SCORES
    needs_pool: ClassVar[bool] = False

    def __init__(self, budget: int | str | Sequence[int] | None = None, design: str = "axis",
                 defense: str | None = None, monitor: bool = True, ood_samples: int = 1000,
                 transfer_eps: float = 0.1, transfer_samples: int = 500, seed: int = 0):
        super().__init__(budget, defense, monitor, ood_samples, transfer_eps, transfer_samples, seed)
        if design not in ("axis", "random"):
            raise ParameterError(f"design must be axis or random, got {design!r}")
        self.design = design

    def queries_needed(self, api: Target) -> int:
        return int(np.prod(api.input_shape)) + 1

    def design_points(self, api: Target, pool: Dataset | None) -> torch.Tensor:
        """The d + 1 query points, shape (d + 1, *input_shape).

        `axis`: the low corner x₀ and, for each feature i, x₀ + (high_i − low_i)·e_i, where the range of each
        feature is the pool's (when given and not constant) or the input bounds: a triangular, well-conditioned
        system whose answers stay in the range the model was built for. `random`: uniform inside the bounds."""
        d = self.queries_needed(api) - 1
        lo, hi = api.bounds
        if self.design == "random":
            points = lo + (hi - lo) * torch.rand(d + 1, d, generator=self.generator(), dtype=torch.float64)
        else:
            low, high = torch.full((d,), lo, dtype=torch.float64), torch.full((d,), hi, dtype=torch.float64)
            if pool is not None:
                flat = torch.as_tensor(pool.x, dtype=torch.float64).reshape(len(pool), -1)
                varies = flat.max(0).values > flat.min(0).values
                low = torch.where(varies, flat.min(0).values.clamp(lo, hi), low)
                high = torch.where(varies, flat.max(0).values.clamp(lo, hi), high)
            points = low.repeat(d + 1, 1)
            points[1:] = torch.where(torch.eye(d, dtype=torch.bool), high, low)
        return points.float().reshape(d + 1, *api.input_shape).to(api.device)

    def extract(self, api: Target, pool: Dataset | None, budgets: list[int]) -> Iterator[tuple[int, nn.Module]]:
        need = self.queries_needed(api)
        if budgets and budgets[0] < need:
            raise ParameterError(f"equation solving needs d + 1 = {need} queries; the budget is {budgets[0]}")
        x = self.design_points(api, pool)
        ratios = log_ratios(api, x)
        system = torch.cat([x.double().reshape(need, -1), torch.ones(need, 1, dtype=torch.float64,
                                                                      device=x.device)], dim=1)
        solution = torch.linalg.lstsq(system.cpu(), ratios.cpu(), driver="gelsd").solution  # (d + 1, K − 1)
        weights = torch.cat([torch.zeros(1, need - 1, dtype=torch.float64), solution[:-1].T])  # (K, d), w_0 = 0
        bias = torch.cat([torch.zeros(1, dtype=torch.float64), solution[-1]])
        if api.n_classes > 2:
            weights, bias = weights - weights.mean(0), bias - bias.mean()
            self.weights_, self.bias_ = weights.numpy(), bias.numpy()
        else:
            self.weights_, self.bias_ = weights[1:].numpy(), bias[1:].numpy()
        copy = nn.Sequential(nn.Flatten(), nn.Linear(need - 1, api.n_classes))
        with torch.no_grad():
            copy[1].weight.copy_(weights.float())
            copy[1].bias.copy_(bias.float())
        yield need, copy.to(api.device)

    def extra_metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {"unknowns_per_class": int(self.weights_.shape[1]) + 1}
        if self.weights_.size <= MAX_REPORTED_PARAMETERS:
            metrics["parameters"] = {"weights": self.weights_.tolist(), "bias": self.bias_.tolist()}
        return metrics
