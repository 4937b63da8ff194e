"""Model inversion (Fredrikson, Jha and Ristenpart, 2015, "Model Inversion Attacks that Exploit Confidence
Information and Basic Countermeasures", CCS): the MI-Face algorithm.

For each class c, gradient descent on the input minimises c(x) = 1 - p_c(x) (+ a total-variation prior for
images), starting from a blank input, projecting onto the input bounds after each step and keeping the best
iterate; it stops early when the cost has not improved for `patience` steps. Steps are L2-normalised so that
saturated softmax outputs still move. With gradient access the gradient is exact; a score-only target gets a
batched antithetic Gaussian estimate of it (NES, Ilyas et al. 2018). The representative of each class is scored
against the real class means: cosine similarity of their deviations from the overall mean, and whether it is most
similar to its own class.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
import torch

from bastion.attacks.base import Attack
from bastion.core.data import Dataset, validate_for_model
from bastion.core.errors import DataError, ParameterError
from bastion.core.registry import register
from bastion.core.results import Result
from bastion.core.target import Access, Target

from .base import check_int

MAX_REPORTED_VALUES = 20_000


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per sample of (n, ..., H, W) images; zeros for flat inputs."""
    if x.dim() < 3:
        return torch.zeros(len(x), device=x.device)
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


class _Cost:
    """c(x) = 1 - p_c(x) + tv_weight * TV(x), per sample, and its gradient (exact or estimated)."""

    def __init__(self, target: Target, classes: torch.Tensor, tv_weight: float, n_estimates: int, sigma: float,
                 generator: torch.Generator):
        self.target, self.classes, self.tv_weight = target, classes, tv_weight
        self.n_estimates, self.sigma, self.generator = n_estimates, sigma, generator
        self.exact = target.access >= Access.GRADIENTS

    def __call__(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        classes = self.classes if classes is None else classes
        p = self.target.probabilities(x).gather(1, classes[:, None]).squeeze(1)
        return 1 - p + self.tv_weight * total_variation(x)

    def grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cost, gradient) at x."""
        if self.exact:
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                cost = self(x)
                (g,) = torch.autograd.grad(cost.sum(), x)
            return cost.detach(), g
        n, q = len(x), self.n_estimates
        u = torch.randn((n, q, *x.shape[1:]), generator=self.generator).to(x.device)
        probes = torch.cat([x[:, None] + self.sigma * u, x[:, None] - self.sigma * u], dim=1)
        with torch.no_grad():
            costs = self(probes.flatten(0, 1), self.classes.repeat_interleave(2 * q)).view(n, 2 * q)
            diff = (costs[:, :q] - costs[:, q:]).view(n, q, *([1] * (x.dim() - 1)))
            return self(x), (diff * u).mean(1) / (2 * self.sigma)


@register("attacks", "inversion", family="privacy")
class ModelInversion(Attack):
    """MI-Face model inversion (Fredrikson et al. 2015): one representative input per class.

    Example:
        >>> from bastion.attacks.privacy.inversion import ModelInversion
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> members = load_dataset("members.npz")
        >>> result = ModelInversion(steps=300).run(target, data, members=members)
        >>> from bastion.families import judged  # the threat family judges what the run measured
        >>> judged(result).findings
    """

    family: ClassVar[str] = "privacy"
    name: ClassVar[str] = "inversion"
    requires: ClassVar[Access] = Access.SCORES
    dataset_params: ClassVar[tuple[str, ...]] = ("members",)

    def __init__(self, steps: int = 300, *, step_size: float = 0.02, patience: int = 50, tv_weight: float = 0.0,
                 classes: list[int] | str | None = None, n_estimates: int = 25, sigma: float = 0.01,
                 seed: int = 0):
        self.steps = check_int(steps, "steps", 1)
        self.step_size = float(step_size)
        self.patience = check_int(patience, "patience", 1)
        self.tv_weight = float(tv_weight)
        if isinstance(classes, str):
            classes = [int(c) for c in classes.split(",") if c.strip()]
        self.classes = None if classes is None else [int(c) for c in classes]
        self.n_estimates = check_int(n_estimates, "n_estimates", 1)
        self.sigma = float(sigma)
        self.seed = int(seed)
        if self.step_size <= 0 or self.tv_weight < 0 or self.sigma <= 0:
            raise ParameterError("step_size and sigma must be positive, tv_weight non-negative")

    def invert(self, target: Target, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Representatives (len(classes), *input_shape) and their final costs."""
        lo, hi = target.bounds
        cls = torch.as_tensor(classes, device=target.device)
        cost_fn = _Cost(target, cls, self.tv_weight, self.n_estimates, self.sigma,
                        torch.Generator().manual_seed(self.seed))
        x = torch.full((len(classes), *target.input_shape), lo, device=target.device)
        scale = self.step_size * (hi - lo) * float(np.prod(target.input_shape)) ** 0.5
        best, best_cost = x.clone(), torch.full((len(classes),), float("inf"), device=target.device)
        stale = torch.zeros(len(classes), dtype=torch.long, device=target.device)
        active = torch.ones(len(classes), dtype=torch.bool, device=target.device)
        for _ in range(self.steps):
            cost, g = cost_fn.grad(x)
            improved = cost < best_cost
            best = torch.where(improved.view(-1, *[1] * (x.dim() - 1)), x, best)
            best_cost = torch.where(improved, cost, best_cost)
            stale = torch.where(improved, 0, stale + 1)
            active &= stale < self.patience
            if not bool(active.any()):
                break
            norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            step = torch.where(active.view(-1, *[1] * (x.dim() - 1)), scale * g / norm, torch.zeros_like(g))
            x = (x - step).clamp(lo, hi)
        final = cost_fn(x)
        better = final < best_cost
        best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x, best)
        return best.detach(), torch.minimum(final, best_cost)

    def run(self, target: Target, data: Dataset | None = None, members: Dataset | None = None,
            **_: Any) -> Result:
        self.check_access(target)
        real = members if members is not None else data
        if real is None:
            raise DataError("model inversion needs real records of the classes (--data) to score the result")
        validate_for_model(real, target.n_classes, target.input_shape)
        classes = self.classes if self.classes is not None else sorted(int(c) for c in np.unique(real.y))
        if any(c < 0 or c >= target.n_classes for c in classes) or not set(classes) <= set(real.y.tolist()):
            raise ParameterError("every class to invert must be a model class with records in the data")
        start, queries_before = time.perf_counter(), target.queries
        reps, costs = self.invert(target, classes)
        with torch.no_grad():
            conf = target.probabilities(reps).gather(1, torch.as_tensor(classes, device=target.device)[:, None])
        self.representatives_ = reps.cpu().numpy()
        metrics = similarity_metrics(self.representatives_, real, classes)
        metrics["confidence"] = conf.squeeze(1).cpu().tolist()
        metrics["final_cost"] = costs.cpu().tolist()
        metrics["gradient"] = "exact" if target.access >= Access.GRADIENTS else "estimated"
        if self.representatives_.size <= MAX_REPORTED_VALUES:
            metrics["representatives"] = self.representatives_.tolist()
        return Result(family=self.family, attack=self.name, params=self.get_params(), metrics=metrics,
                            queries=target.queries - queries_before, seconds=time.perf_counter() - start,
                            device=str(target.device))


def similarity_metrics(reps: np.ndarray, real: Dataset, classes: list[int]) -> dict[str, Any]:
    """Cosine similarity of each representative to every class mean, after removing the overall mean."""
    flat = real.x.reshape(len(real), -1).astype(np.float64)
    overall = flat.mean(0)
    means = np.stack([flat[real.y == c].mean(0) for c in classes]) - overall
    r = reps.reshape(len(reps), -1).astype(np.float64) - overall
    sim = (r @ means.T) / (np.linalg.norm(r, axis=1)[:, None] * np.linalg.norm(means, axis=1)[None] + 1e-12)
    own = np.diag(sim)
    off = (sim.sum(1) - own) / max(1, len(classes) - 1)
    nearest = sim.argmax(1)
    return {
        "classes": classes,
        "similarity": float(own.mean()),
        "similarity_per_class": own.tolist(),
        "similarity_to_other_classes": float(off.mean()),
        "matching_rate": float((nearest == np.arange(len(classes))).mean()),
        "most_similar_class": [classes[i] for i in nearest],
        "chance": 1.0 / len(classes),
    }
