"""Output hardening: a prediction API placed in front of a model that changes what the API returns.

An `OutputDefense` is itself a `Target` wrapped around another one. It shares the wrapped target's query counter
(each sample is counted once), never grants gradients (it stands for a deployed API), and transforms the
probabilities that the model behind it computes. `unwrap` walks back to that model, which is what an extraction
attack tries to copy.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch

from bastion.core.errors import AccessError
from bastion.core.target import Access, Target, TargetView


def base_probabilities(base: Target, x: torch.Tensor) -> torch.Tensor:
    """Probabilities of `base` for a batch, without charging its counter (the wrapper already did)."""
    with torch.no_grad():
        out = base._forward(x.detach())
    if base.output_kind == "logits":
        return out.float().softmax(dim=-1)
    if base.output_kind == "probabilities":
        return out.float()
    raise AccessError(f"{base.name} returns labels only: there are no scores to harden")


class OutputDefense(TargetView, metaclass=ABCMeta):
    """Base class: subclasses set `defense` and implement `transform(probabilities, x) -> probabilities`."""

    defense: str = "output defense"
    output_kind = "probabilities"
    grants: Access = Access.SCORES

    def __init__(self, base: Target):
        if base.access < Access.SCORES and self.grants >= Access.SCORES:
            raise AccessError(f"{self.defense} needs a model with score access; {base.name} grants labels only")
        super().__init__(base, access=min(base.access, self.grants), name=f"{base.name} + {self.defense}",
                         output_kind=type(self).output_kind)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(base_probabilities(self.base, x), x)

    @abstractmethod
    def transform(self, probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """What the API returns for a batch whose true probabilities are `probs` (shape (n, n_classes))."""

    def describe(self) -> dict:
        return {**super().describe(), "defense": self.defense}


def unwrap(target: Target) -> Target:
    """The model behind any output defenses (the target itself when it has none)."""
    while isinstance(target, OutputDefense):
        target = target.base
    return target
