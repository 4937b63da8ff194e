"""Spectral Signatures: poisoned samples stand out along the top singular direction of a class's features."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from bastion.core.data import Dataset, validate_for_model
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import Access, Target
from bastion.defenses.base import Defense, require_data, torch_module
from bastion.defenses.detect.activation_clustering import screening_findings
from bastion.defenses.detect.features import (
    anomaly_index,
    detection_metrics,
    load_ground_truth,
    representation,
)


def spectral_scores(features: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Squared projection of each centred representation onto the top right singular vector, shape (n,), and
    the ratio σ1²/σ2² of the top two singular values (how much one direction dominates the class)."""
    centred = features - features.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    ratio = float(s[0] ** 2 / s[1].clamp_min(1e-12) ** 2) if len(s) > 1 else 1.0
    return (centred @ vh[0]) ** 2, ratio


@register("defenses", "spectral", family="detect")
class SpectralSignatures(Defense):
    """Spectral Signatures (Tran, Li & Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018).

    For each class, the feature activations (see `features.feature_layer`; `layer` names another) of the
    training data are centred and every sample is scored by its squared correlation with the top singular vector;
    the `removal_factor`·`eps` fraction of the class with the highest scores is flagged for removal, `eps` being
    an upper bound on the poisoned fraction of any class (the paper's factor is 1.5). Scores keep their raw scale
    so ROC metrics rank every sample of every class on one scale. Bastion's addition: a class is reported as
    suspect when its top direction dominates abnormally (σ1²/σ2² with an anomaly index above
    `anomaly_threshold` among the classes, on the high side). `ground_truth` adds TPR, FPR and AUROC.
    """

    name = "spectral"
    family = "detect"
    requires = Access.GRADIENTS

    def __init__(self, eps: float = 0.1, removal_factor: float = 1.5, anomaly_threshold: float = 2.0,
                 layer: str | None = None, ground_truth: str | np.ndarray | None = None):
        if not 0 < eps < 1 or removal_factor <= 0 or anomaly_threshold <= 0:
            raise ParameterError("eps must lie in (0, 1), removal_factor and anomaly_threshold be positive")
        self.eps, self.removal_factor, self.anomaly_threshold = float(eps), float(removal_factor), anomaly_threshold
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
            s, ratio = spectral_scores(feats[idx])
            k = min(len(idx) - 1, int(np.ceil(self.removal_factor * self.eps * len(idx))))
            flagged[idx[s.topk(k).indices]] = True
            scores[idx] = s
            classes.append({"class": int(c), "n": len(idx), "n_flagged": k, "spectral_ratio": ratio})
        ratios = np.array([c["spectral_ratio"] for c in classes])
        index = anomaly_index(ratios) if len(ratios) > 2 else np.zeros(len(ratios))
        for info, a, r in zip(classes, index, ratios, strict=True):
            info["anomaly_index"] = float(a)
            info["poisoned"] = bool(a > self.anomaly_threshold and r > np.median(ratios))
        return flagged.cpu().numpy(), scores.cpu().numpy(), classes

    def run(self, target: Target, data: Dataset | None = None, train_data: Dataset | None = None,
            **_: Dataset) -> Any:
        """Screen `train_data` (or `data` when no training set is given separately)."""
        self.check_access(target)
        data = require_data(train_data if train_data is not None else data, self.name, "--train-data FILE")
        validate_for_model(data, target.n_classes, target.input_shape)
        start = time.perf_counter()
        is_poison = load_ground_truth(self.ground_truth, len(data))
        flagged, scores, classes = self.screen(target, data)
        self.flagged, self.scores = flagged, scores
        metrics = detection_metrics(flagged, scores, is_poison)
        metrics["classes"] = classes
        metrics["poisoned_classes"] = [c["class"] for c in classes if c["poisoned"]]
        return self.result(target, metrics, start, findings=screening_findings(self.name, metrics))
