"""Truncating the API's output: labels only, rounded scores, top-k scores (Tramèr et al., USENIX Security 2016).

Tramèr et al. list these as the first countermeasures to equation-solving and learning-based extraction: each
keeps the top-1 label (so accuracy is unchanged) and removes information an attacker would learn from.
"""

from __future__ import annotations

import torch

from bastion.core.errors import ParameterError
from bastion.core.target import Access, Target
from bastion.defenses.postprocess.base import OutputDefense, base_probabilities


class LabelOnly(OutputDefense):
    """Return the predicted label only (the API grants label access)."""

    defense = "label only"
    output_kind = "labels"
    grants = Access.LABELS

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.base.output_kind == "labels":
            with torch.no_grad():
                return self.base._forward(x.detach()).long()
        return self.transform(base_probabilities(self.base, x), x)

    def transform(self, probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return probs.argmax(dim=-1)


class Rounding(OutputDefense):
    """Round each probability to `decimals` decimal places (e.g. 2: 0.8734 -> 0.87)."""

    defense = "rounding"

    def __init__(self, base: Target, decimals: int = 2):
        if int(decimals) < 0:
            raise ParameterError("rounding decimals must be >= 0")
        self.decimals = int(decimals)
        super().__init__(base)
        self.name = f"{base.name} + rounding to {self.decimals} decimals"

    def transform(self, probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        scale = 10.0 ** self.decimals
        return torch.round(probs * scale) / scale


class TopK(OutputDefense):
    """Return the k largest probabilities and zero for the rest (renormalised to sum to one if asked)."""

    defense = "top-k"

    def __init__(self, base: Target, k: int = 1, renormalize: bool = False):
        if not 1 <= int(k) <= base.n_classes:
            raise ParameterError(f"top-k needs 1 <= k <= {base.n_classes}, got {k}")
        self.k, self.renormalize = int(k), bool(renormalize)
        super().__init__(base)
        self.name = f"{base.name} + top-{self.k}"

    def transform(self, probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        top = probs.topk(self.k, dim=-1)
        out = torch.zeros_like(probs).scatter_(-1, top.indices, top.values)
        return out / out.sum(dim=-1, keepdim=True).clamp_min(1e-12) if self.renormalize else out
