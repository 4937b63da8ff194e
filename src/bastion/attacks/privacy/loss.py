"""LOSS threshold attack (Yeom et al., 2018, "Privacy Risk in Machine Learning: Analyzing the Connection to
Overfitting", CSF): a record is a member when the target's loss on it is low. Score = -cross-entropy."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bastion.core.registry import register
from bastion.core.target import Target

from .base import MembershipAttack, MembershipData, target_log_probs, true_log_prob


@register("attacks", "loss", family="privacy")
class LossAttack(MembershipAttack):
    """LOSS threshold membership attack (Yeom et al. 2018): lower loss, more likely a member.

    Besides the threshold-free ROC, reports Yeom's fixed-threshold attack with the threshold at the members'
    mean loss (the adversary of the paper knows the expected training loss): its TPR, FPR and advantage.

    Example:
        >>> from bastion.attacks.privacy.loss import LossAttack
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> members = load_dataset("members.npz")
        >>> nonmembers = load_dataset("nonmembers.npz")
        >>> population = load_dataset("population.npz")
        >>> attack = LossAttack(n_bootstrap=200)
        >>> result = attack.run(target, data, members=members, nonmembers=nonmembers, population=population)
        >>> from bastion.families import judged  # the threat family judges what the run measured
        >>> judged(result).findings
    """

    name = "loss"

    def score(self, target: Target, data: MembershipData) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        y = torch.as_tensor(data.y, device=target.device)
        scores = true_log_prob(target_log_probs(target, data.x), y).double().cpu().numpy()
        m, n = scores[: data.n_members], scores[data.n_members:]
        return m, n, self.merge_extra(m, n, [], [])

    def merge_extra(self, scores_m: np.ndarray, scores_n: np.ndarray, extras: list[dict[str, Any]],
                    sizes: list[tuple[int, int]]) -> dict[str, Any]:
        """Yeom et al.'s threshold attack (member if the loss is below the mean training loss), on all scores."""
        if not len(scores_m) or not len(scores_n):
            return {}
        threshold = float(scores_m.mean())  # -(mean training loss)
        tpr, fpr = float((scores_m >= threshold).mean()), float((scores_n >= threshold).mean())
        return {"threshold_attack": {"threshold_loss": -threshold, "tpr": tpr, "fpr": fpr, "advantage": tpr - fpr}}
