"""MM-BD: a data-free backdoor scan from the largest logit margin each class can reach."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.results import Result
from bastion.core.target import Access, Target
from bastion.core.training import frozen
from bastion.defenses.base import Defense, torch_module


def max_margins(model: torch.nn.Module, n_classes: int, shape: tuple[int, ...], bounds: tuple[float, float],
                starts: int, steps: int, lr: float, seed: int, device: torch.device) -> torch.Tensor:
    """For every class k, max over inputs x in bounds of logit_k(x) − max_{j≠k} logit_j(x), by Adam ascent from
    `starts` random inputs per class (all classes in one batch); shape (n_classes,)."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = bounds
    raw = torch.randn(n_classes * starts, *shape, generator=gen).to(device).requires_grad_(True)
    classes = torch.arange(n_classes, device=device).repeat_interleave(starts)
    opt = torch.optim.Adam([raw], lr=lr)
    best = torch.full((n_classes * starts,), -float("inf"), device=device)
    for _ in range(steps + 1):
        logits = model(lo + (hi - lo) * torch.sigmoid(raw))
        own = logits.gather(1, classes[:, None]).squeeze(1)
        margin = own - logits.scatter(1, classes[:, None], -float("inf")).max(1).values
        best = torch.maximum(best, margin.detach())
        opt.zero_grad(set_to_none=True)
        (-margin.sum()).backward()
        opt.step()
    return best.view(n_classes, starts).max(1).values


def null_tails(statistics: np.ndarray) -> tuple[int, np.ndarray]:
    """The class with the largest statistic and every class's upper-tail probability 1 − F(r_k) under the Gamma
    null F fitted to the statistics of all classes but that largest one."""
    from scipy.stats import gamma

    top = int(np.argmax(statistics))
    rest = np.delete(statistics, top)
    shift = min(rest.min(), 0.0)  # margins can be negative for a class the model never predicts
    shape_, loc, scale = gamma.fit(rest - shift + 1e-6, floc=0)
    return top, gamma.sf(np.maximum(statistics - shift + 1e-6, 0.0), shape_, loc=loc, scale=scale)


def order_statistic_p_value(statistics: np.ndarray) -> tuple[int, float]:
    """The class with the largest statistic and the p-value of that maximum under the Gamma null of `null_tails`:
    1 − F(r_max)^(K−1), the chance that the largest of K−1 null draws is that high."""
    top, tails = null_tails(statistics)
    return top, float(1.0 - (1.0 - tails[top]) ** (len(statistics) - 1))


@register("defenses", "mm-bd", family="detect",
          summary="is this model backdoored? data-free maximum-margin statistic with a null (Wang 2024)")
class MMBD(Defense):
    """MM-BD (Wang, Xiang, Miller & Kesidis, "MM-BD: Post-Training Detection of Backdoor Attacks with Arbitrary
    Backdoor Pattern Types Using a Maximum Margin Statistic", IEEE S&P 2024).

    Needs no data at all. A backdoor teaches the model one feature (the trigger) that sends any input to the target
    class with an unusually large logit margin, whatever the trigger's shape. For each class k the statistic is the
    largest margin logit_k(x) − max_{j≠k} logit_j(x) over inputs x within the target's bounds, found by Adam
    ascent from `starts` random inputs (`steps` steps, learning rate `lr`). The null distribution is a Gamma fitted
    to the statistics of all classes but the largest one; the model is flagged, with the largest class as the
    backdoor target, when the order-statistic p-value 1 − F(r_max)^(K−1) is below `significance` (the paper's
    0.05). Every class reports its statistic (`max_margin`) and its upper tail under the null (`null_tail`, not
    corrected for the number of classes). Like every detector here it can miss: a p-value above the threshold
    means "no evidence", not "clean".

    Example:
        >>> from bastion.defenses.detect.mm_bd import MMBD
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = MMBD(starts=8).run(target, data)
        >>> from bastion.families import judged  # the threat family judges what the run measured
        >>> judged(result).findings
    """

    name = "mm-bd"
    family = "detect"
    threat = "backdoor"
    requires = Access.GRADIENTS

    def __init__(self, starts: int = 8, *, steps: int = 300, lr: float = 0.1, significance: float = 0.05,
                 seed: int = 0):
        if starts < 1 or steps < 1 or lr <= 0 or not 0 < significance < 1:
            raise ParameterError("starts and steps must be at least 1, lr positive and significance in (0, 1)")
        self.starts, self.steps, self.lr, self.significance, self.seed = (int(starts), int(steps), float(lr),
                                                                         float(significance), int(seed))

    def run(self, target: Target, data: Dataset | None = None, **_: Dataset) -> Result:
        """Scan the model; `data` is not needed (and not used)."""
        self.check_access(target)
        if target.n_classes < 3:
            raise ParameterError("mm-bd fits a null to the other classes' statistics: it needs at least 3 classes")
        model = torch_module(target, self.name)
        start = time.perf_counter()
        with frozen(model):
            margins = max_margins(model, target.n_classes, tuple(target.input_shape), target.bounds, self.starts,
                                  self.steps, self.lr, self.seed, target.device).cpu().numpy().astype(np.float64)
        top, p_value = order_statistic_p_value(margins)
        flagged = [top] if p_value < self.significance else []
        metrics: dict[str, Any] = {"max_margin": margins.tolist(), "null_tail": null_tails(margins)[1].tolist(),
                                   "top_class": top, "p_value": p_value, "significance": self.significance,
                                   "flagged_classes": flagged}
        return self.result(target, metrics, start)
