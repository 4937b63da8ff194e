"""Prediction poisoning with Maximizing Angular Deviation (Orekondy, Schiele & Fritz, "Prediction Poisoning:
Towards Defenses Against DNN Model Stealing Attacks", ICLR 2020).

MAD perturbs each answer y into ŷ (with ||ŷ − y||₁ ≤ ε) so that the gradient an attacker's model F(·; w) receives
from ŷ points as far as possible from the one it would receive from y: with G = ∇_w log F(x; w) (one row per class),
it picks the vertex ỹ of the probability simplex that maximises the angle between Gᵀỹ and Gᵀy, then moves y
towards ỹ by the largest step inside the ε ball.

Documented simpler variant: G is restricted to the surrogate's output layer (logits z = W·h + b). There
∇_W log p_k = (e_k − p)·hᵀ, so Gᵀy = (y − p) ⊗ [h; 1] and the angle between Gᵀỹ and Gᵀy equals the angle
between ỹ − p and y − p: the whole objective has a closed form, computed for a batch at once, which needs only
the surrogate's probabilities p. Without a surrogate, p is uniform (an untrained surrogate with a zero output
layer). `argmax_preserving=True` is the paper's MAD-argmax: the step is shortened so the top-1 label never changes.
"""

from __future__ import annotations

import torch
from torch import nn

from bastion.core.errors import ParameterError
from bastion.core.target import Target
from bastion.defenses.postprocess.base import OutputDefense


def mad_vertex(y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Index of the simplex vertex e_k that maximises the angle between e_k − p and y − p, per row."""
    k = y.shape[-1]
    eye = torch.eye(k, dtype=y.dtype, device=y.device)
    toward = eye.unsqueeze(0) - p.unsqueeze(1)  # (n, k, k): e_j − p for each candidate j
    current = (y - p).unsqueeze(1)  # (n, 1, k)
    cosine = (toward * current).sum(-1) / (toward.norm(dim=-1) * current.norm(dim=-1)).clamp_min(1e-12)
    degenerate = current.squeeze(1).norm(dim=-1) < 1e-9  # y == p: every direction is equally far
    return torch.where(degenerate, y.argmin(dim=-1), cosine.argmin(dim=-1))


def mad_perturb(y: torch.Tensor, p: torch.Tensor, epsilon: float, argmax_preserving: bool = False) -> torch.Tensor:
    """ŷ = (1 − α)·y + α·e_k* with ||ŷ − y||₁ = min(ε, ||e_k* − y||₁), the MAD answer for each row of y."""
    vertex = mad_vertex(y, p)
    y_k = y.gather(-1, vertex[:, None]).squeeze(-1)
    alpha = (epsilon / (2 * (1 - y_k)).clamp_min(1e-12)).clamp(max=1.0)  # ||e_k − y||₁ = 2·(1 − y_k)
    if argmax_preserving:
        top_value, top = y.max(dim=-1)
        gap = top_value - y_k
        keep = (gap / (1 + gap)) * (1 - 1e-4)  # largest α for which ŷ_top stays above ŷ_k
        alpha = torch.where(vertex == top, alpha, torch.minimum(alpha, keep))
    target = nn.functional.one_hot(vertex, y.shape[-1]).to(y.dtype)
    return (1 - alpha[:, None]) * y + alpha[:, None] * target


class PredictionPoisoning(OutputDefense):
    """MAD prediction poisoning within an L1 budget `epsilon` (0 < ε ≤ 2), optionally argmax-preserving.

    `surrogate` is the defender's stand-in for the attacker's model (an nn.Module returning logits); None uses a
    uniform surrogate.
    """

    defense = "prediction poisoning"

    def __init__(self, base: Target, epsilon: float = 0.5, surrogate: nn.Module | None = None,
                 argmax_preserving: bool = False):
        if not 0 < epsilon <= 2:
            raise ParameterError(f"prediction poisoning needs 0 < epsilon <= 2 (an L1 distance), got {epsilon}")
        self.epsilon, self.argmax_preserving = float(epsilon), bool(argmax_preserving)
        super().__init__(base)
        self.surrogate = surrogate.to(self.device).eval() if surrogate is not None else None
        kind = "MAD-argmax" if self.argmax_preserving else "MAD"
        self.name = f"{base.name} + prediction poisoning ({kind}, eps={self.epsilon:g})"

    def transform(self, probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = probs.double()
        if self.surrogate is None:
            p = torch.full_like(y, 1.0 / y.shape[-1])
        else:
            with torch.no_grad():
                p = self.surrogate(x).double().softmax(dim=-1)
        return mad_perturb(y, p, self.epsilon, self.argmax_preserving).to(probs.dtype)
