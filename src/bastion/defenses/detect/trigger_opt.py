"""Pieces of the mask-and-pattern trigger optimisation shared by Neural Cleanse (and TABOR) and expected
transferability: the tanh parametrisation and Neural Cleanse's schedule of the mask cost λ (Wang et al., IEEE S&P
2019)."""

from __future__ import annotations

import torch


def decode(mask_raw: torch.Tensor, pattern_raw: torch.Tensor, bounds: tuple[float, float]
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask in [0, 1] and pattern within `bounds` from their unconstrained parameters."""
    lo, hi = bounds
    return (torch.tanh(mask_raw) + 1) / 2, lo + (hi - lo) * (torch.tanh(pattern_raw) + 1) / 2


class CostSchedule:
    """λ per trigger: 0 until the trigger first works, then `init_cost`; multiplied by `multiplier` after `patience`
    consecutive successes, divided by `multiplier`^1.5 after `patience` consecutive failures."""

    def __init__(self, k: int, init_cost: float, multiplier: float, patience: int, device: torch.device | str):
        self.init_cost, self.multiplier, self.patience = init_cost, multiplier, patience
        self.cost = torch.zeros(k, device=device)
        self.up, self.down = torch.zeros(k, device=device), torch.zeros(k, device=device)

    @torch.no_grad()
    def update(self, hit: torch.Tensor) -> None:
        """Advance the schedule by one step given which triggers worked (`hit`, shape (k,))."""
        cost = self.cost
        start = (cost == 0) & hit  # the paper's warm-up: λ switches on once the trigger works
        self.up, self.down = torch.where(hit, self.up + 1, 0.0), torch.where(hit, 0.0, self.down + 1)
        raise_ = ~start & (cost > 0) & (self.up >= self.patience)
        lower = (cost > 0) & (self.down >= self.patience)
        cost = torch.where(start, self.init_cost, cost)
        cost = torch.where(raise_, cost * self.multiplier, cost)
        self.cost = torch.where(lower, cost / self.multiplier ** 1.5, cost)
        self.up, self.down = torch.where(raise_, 0.0, self.up), torch.where(lower, 0.0, self.down)
