"""Label-only membership attacks (Choquette-Choo, Tramer, Carlini and Papernot, 2021, "Label-Only Membership
Inference Attacks", ICML; Li and Zhang, 2021, "Membership Leakage in Label-Only Exposures", CCS).

`gap`: a record is a member when the model labels it correctly (the baseline of Yeom et al. 2018).
`boundary`: training records lie farther from the decision boundary. The L2 distance is estimated from labels
only (random-direction search refined by HopSkipJump, see `boundary.py`); the score is that distance, and 0 for
misclassified records.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import Access, Target

from .base import MembershipAttack, MembershipData, check_int
from .boundary import boundary_distance


@register("attacks", "label-only", family="privacy")
class LabelOnlyAttack(MembershipAttack):
    """Label-only membership inference: the gap attack or the decision-boundary distance (Choquette-Choo 2021).

    Example:
        >>> from bastion.attacks.privacy.label_only import LabelOnlyAttack
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> members = load_dataset("members.npz")
        >>> nonmembers = load_dataset("nonmembers.npz")
        >>> population = load_dataset("population.npz")
        >>> attack = LabelOnlyAttack(method='boundary')
        >>> result = attack.run(target, data, members=members, nonmembers=nonmembers, population=population)
        >>> from bastion.families import judged  # the threat family judges what the run measured
        >>> judged(result).findings
    """

    name = "label-only"
    requires: ClassVar[Access] = Access.LABELS

    def __init__(self, method: str = "boundary", *, n_directions: int = 16, search_steps: int = 10,
                 iterations: int = 10, n_grad: int = 50, n_bootstrap: int = 200, seed: int = 0):
        super().__init__(n_bootstrap=n_bootstrap, seed=seed)
        if method not in ("boundary", "gap"):
            raise ParameterError(f"method must be boundary or gap, got {method!r}")
        self.method = method
        self.n_directions = check_int(n_directions, "n_directions", 1)
        self.search_steps = check_int(search_steps, "search_steps", 1)
        self.iterations = check_int(iterations, "iterations", 0)
        self.n_grad = check_int(n_grad, "n_grad", 2)

    def score(self, target: Target, data: MembershipData) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        x = torch.as_tensor(data.x, device=target.device)
        y = torch.as_tensor(data.y, device=target.device)
        correct = target.labels(x) == y
        scores = correct.double()
        if self.method == "boundary":
            idx = correct.nonzero().flatten()
            g = torch.Generator().manual_seed(self.seed)
            dist = boundary_distance(target, x[idx], y[idx], self.n_directions, self.search_steps,
                                     self.iterations, self.n_grad, g)
            scores = torch.zeros(len(x), dtype=torch.float64, device=target.device)
            scores[idx] = dist.double()
        scores = scores.cpu().numpy()
        m = data.n_members
        extra = {"method": self.method, "member_accuracy": float(correct[:m].float().mean()),
                 "nonmember_accuracy": float(correct[m:].float().mean())}
        return scores[:m], scores[m:], extra

    def merge_extra(self, scores_m: np.ndarray, scores_n: np.ndarray, extras: list[dict[str, Any]],
                    sizes: list[tuple[int, int]]) -> dict[str, Any]:
        """The chunks' accuracies, weighted by the records each chunk scored."""
        if len(extras) == 1:
            return extras[0]
        out: dict[str, Any] = {"method": self.method}
        for side, key in ((0, "member_accuracy"), (1, "nonmember_accuracy")):
            rows = [(e[key], n[side]) for e, n in zip(extras, sizes, strict=True) if n[side]]
            out[key] = float(np.average([a for a, _ in rows], weights=[w for _, w in rows])) if rows else 0.0
        return out
