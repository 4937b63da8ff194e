"""TABOR: Neural Cleanse's trigger reverse-engineering with regularisers against false (natural-feature) triggers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.defenses.detect.neural_cleanse import NeuralCleanse


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of each image (sum of absolute differences of neighbouring pixels), shape (k,).
    Flat inputs (k, d) have no neighbourhood: 0."""
    if images.dim() < 3:
        return images.new_zeros(len(images))
    dh = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).sum(1)
    dw = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).sum(1)
    return dh + dw


@register("defenses", "tabor", family="detect",
          summary="is this model backdoored? Neural Cleanse with TABOR's regularisers against false triggers")
class TABOR(NeuralCleanse):
    """TABOR (Guo, Wang, Xing, Du & Song, "TABOR: A Highly Accurate Approach to Inspecting and Restoring Trojan
    Backdoors in AI Systems", arXiv:1908.01763, ICDM 2020).

    Neural Cleanse's optimisation (mask m, pattern p, x' = (1 − m)·x + m·p sent to class t, with its adaptive
    mask cost λ_t) plus the paper's regularisers, which shrink the space of "triggers" a clean model also has:
    (R1) besides ‖m‖₁, the pattern outside the mask, ‖(1 − m)·p‖₁ ("scattered" triggers); (R2) the total
    variation of m and of m·p (smooth, compact triggers rather than sparse noise) — both in pixels, weighted like
    ‖m‖₁ by λ_t (`smooth_weight` scales R2, `outside_weight` R1's pattern term); (R3) the cross-entropy of the
    input with the trigger's area removed, x·(1 − m), against its true label (a trigger must not overlay the
    object: a natural feature of class t works by redrawing the object, a backdoor trigger does not need to),
    weight `overlay_weight`; (R4) the cross-entropy of the trigger alone, m·p on an empty input, against t (a real
    trigger is sufficient by itself), weight `alone_weight`. The paper leaves the weights to the user. Here R3 and
    R4 weigh 0.1 of the attack term: at weight 1 (tried first) R3 dominated on 8×8 digits, where every pixel is
    object, and the clean model's masks grew so uniform that the MAD flagged ordinary classes; 0.1 was chosen on
    the project's digits seed-0 CNN and one Fashion-MNIST model and then measured on models it was not chosen on
    (docs/benchmarks/poisoning.md §7.4). The decision is Neural Cleanse's (`decision`: the MAD anomaly index of
    the restored masks' L1 norms, or the null of their reciprocals).
    R3 needs the clean inputs' labels, which the defender's clean set carries. The paper's further refinement of
    the restored trigger by a saliency explanation before scoring is not implemented.

    Example:
        >>> from bastion.defenses.detect.tabor import TABOR
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = TABOR(steps=300).run(target, data)
        >>> from bastion.families import judged  # the threat family judges what the run measured
        >>> judged(result).findings
    """

    name = "tabor"

    def __init__(self, steps: int = 300, *, lr: float = 0.2, batch_size: int = 32, init_cost: float = 1e-3,
                 cost_multiplier: float = 1.5, patience: int = 10, attack_threshold: float = 0.99,
                 anomaly_threshold: float = 2.0, class_batch: int = 16, eval_samples: int = 256, seed: int = 0,
                 scale: str = "norm", restarts: int = 1, decision: str = "mad", significance: float = 0.05,
                 smooth_weight: float = 1.0, outside_weight: float = 1.0, overlay_weight: float = 0.1,
                 alone_weight: float = 0.1):
        super().__init__(steps, lr=lr, batch_size=batch_size, init_cost=init_cost, cost_multiplier=cost_multiplier,
                         patience=patience, attack_threshold=attack_threshold, anomaly_threshold=anomaly_threshold,
                         class_batch=class_batch, eval_samples=eval_samples, seed=seed, scale=scale,
                         restarts=restarts, decision=decision, significance=significance)
        if min(smooth_weight, outside_weight, overlay_weight, alone_weight) < 0:
            raise ParameterError("the regularisers' weights must be non-negative")
        self.smooth_weight, self.outside_weight = float(smooth_weight), float(outside_weight)
        self.overlay_weight, self.alone_weight = float(overlay_weight), float(alone_weight)

    def extra_loss(self, model: torch.nn.Module, xb: torch.Tensor, yb: torch.Tensor, classes: torch.Tensor,
                   mask: torch.Tensor, pattern: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
        """R1's pattern term and R2 (weighted by λ_t), R3 and R4 (cross-entropies), per class, shape (k,)."""
        k, shape = len(classes), xb.shape[1:]
        outside = ((1 - mask) * pattern).abs().flatten(1).sum(1)
        smooth = total_variation(mask) + total_variation(mask * pattern)
        terms = cost * (self.outside_weight * outside + self.smooth_weight * smooth)
        if self.overlay_weight:
            cut = ((1 - mask[:, None]) * xb[None]).reshape(-1, *shape)
            terms = terms + self.overlay_weight * F.cross_entropy(model(cut), yb.repeat(k), reduction="none"
                                                                  ).view(k, -1).mean(1)
        if self.alone_weight:
            terms = terms + self.alone_weight * F.cross_entropy(model(mask * pattern), classes, reduction="none")
        return terms
