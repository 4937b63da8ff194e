"""Spectral Signatures: poisoned samples stand out along the top singular direction of a class's features."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import Access, Target
from bastion.defenses.base import torch_module
from bastion.defenses.detect.features import representation
from bastion.defenses.detect.screening import TrainingDataScreen


def spectral_scores(features: torch.Tensor) -> torch.Tensor:
    """Squared projection of each centred representation onto the top right singular vector, shape (n,)."""
    centred = features - features.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ vh[0]) ** 2


@register("defenses", "spectral", family="detect",
          summary="remove the training samples with the strongest spectral signature (Tran 2018)")
class SpectralSignatures(TrainingDataScreen):
    """Spectral Signatures (Tran, Li & Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018).

    For each class, the feature activations (see `features.feature_layer`; `layer` names another) of the
    training data are centred and every sample is scored by its squared correlation with the top singular vector;
    the `removal_factor`·`eps` fraction of the class with the highest scores is flagged for removal, `eps` being
    an upper bound on the poisoned fraction of any class (the paper's factor is 1.5). The method always removes
    that fraction: it cleans a training set, it does not say whether one is poisoned. Scores keep their raw scale
    so ROC metrics rank every sample of every class on one scale; `ground_truth` adds TPR, FPR and AUROC.

    Example:
        >>> from bastion.defenses.detect.spectral import SpectralSignatures
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> train_data = load_dataset("train.npz")
        >>> result = SpectralSignatures(eps=0.1).run(target, data, train_data=train_data)
        >>> from bastion.families import judged  # the threat family judges what the run measured
        >>> judged(result).findings
    """

    name = "spectral"
    family = "detect"
    threat = "backdoor"
    requires = Access.GRADIENTS

    def __init__(self, eps: float = 0.1, *, removal_factor: float = 1.5, layer: str | None = None,
                 ground_truth: str | np.ndarray | None = None):
        if not 0 < eps < 1 or removal_factor <= 0:
            raise ParameterError("eps must lie in (0, 1) and removal_factor be positive")
        self.eps, self.removal_factor = float(eps), float(removal_factor)
        self.layer, self.ground_truth = layer, ground_truth

    def screen(self, target: Target, data: Dataset) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Flags, scores and per-class statistics for a training set."""
        model = torch_module(target, self.name)
        x = torch.as_tensor(data.x, dtype=torch.float32, device=target.device)
        feats = representation(model, x, self.layer).double()
        y = torch.as_tensor(data.y, device=target.device)
        flagged = torch.zeros(len(data), dtype=torch.bool, device=target.device)
        scores = torch.zeros(len(data), dtype=torch.float64, device=target.device)
        classes = []
        for c in torch.unique(y).tolist():
            idx = (y == c).nonzero().flatten()
            if len(idx) < 3:
                continue
            s = spectral_scores(feats[idx])
            k = min(len(idx) - 1, int(np.ceil(self.removal_factor * self.eps * len(idx))))
            flagged[idx[s.topk(k).indices]] = True
            scores[idx] = s
            classes.append({"class": int(c), "n": len(idx), "n_flagged": k, "top_score": float(s.max())})
        return flagged.cpu().numpy(), scores.cpu().numpy(), classes
