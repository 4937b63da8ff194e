"""Reverse sigmoid (Lee, Edraki & Qi, "Defending Against NN Model Stealing Attacks Using Deceptive
Perturbations", IEEE S&P Workshops 2019).

Each probability y is replaced by ŷ = α·(y − r(y)) with the perturbation r(y) = β·[σ(γ·σ⁻¹(y)) − ½] and α the
normaliser that makes ŷ sum to one. The perturbation is zero at y = ½ and grows towards the tails, where it makes
the output non-monotone in the logit: a substitute trained on the scores (cross-entropy or KL) receives misleading
gradients, while the top-1 label is kept for the output distributions a classifier usually produces.
"""

from __future__ import annotations

import torch

from bastion.core.errors import ParameterError
from bastion.core.target import Target
from bastion.defenses.postprocess.base import OutputDefense


class ReverseSigmoid(OutputDefense):
    """Reverse-sigmoid perturbation of the scores; `beta` sets its size, `gamma` its steepness."""

    defense = "reverse sigmoid"

    def __init__(self, base: Target, beta: float = 1.0, gamma: float = 0.1):
        if beta <= 0 or gamma <= 0:
            raise ParameterError("reverse sigmoid needs beta > 0 and gamma > 0")
        self.beta, self.gamma = float(beta), float(gamma)
        super().__init__(base)
        self.name = f"{base.name} + reverse sigmoid (beta={self.beta:g}, gamma={self.gamma:g})"

    def transform(self, probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        p = probs.double().clamp(1e-12, 1 - 1e-12)
        inverse = torch.log(p) - torch.log1p(-p)  # σ⁻¹(y)
        perturbation = self.beta * (torch.sigmoid(self.gamma * inverse) - 0.5)
        out = (p - perturbation).clamp_min(0.0)
        return (out / out.sum(dim=-1, keepdim=True).clamp_min(1e-12)).to(probs.dtype)
