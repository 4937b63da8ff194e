"""Shared `run` of the training-data screens (Activation Clustering, Spectral Signatures)."""

from __future__ import annotations

import time
from abc import abstractmethod
from typing import Any

import numpy as np

from bastion.core.data import Dataset, validate_for_model
from bastion.core.results import Result
from bastion.core.target import Target
from bastion.defenses.base import Defense, require_data
from bastion.defenses.detect.features import detection_metrics, load_ground_truth


def suspects(flagged: np.ndarray, scores: np.ndarray) -> list[dict[str, float]]:
    """The flagged samples as `{"index", "score"}`, most suspect first (indices into the screened set)."""
    index = np.nonzero(flagged)[0]
    order = index[np.argsort(-scores[index], kind="stable")]
    return [{"index": int(i), "score": float(scores[i])} for i in order]


class TrainingDataScreen(Defense):
    """A defense that flags suspect training samples; subclasses implement `screen` (the backdoor family judges).

    `ground_truth` (set by the subclass's `__init__`) adds TPR, FPR and AUROC against the known poison. After
    `run`, `flagged_` and `scores_` hold the per-sample verdicts and `cleaned_` the training set without the suspects
    (what `bastion defend ... --out clean.npz` writes)."""

    ground_truth: Any = None
    cleaned_: Dataset | None = None

    @abstractmethod
    def screen(self, target: Target, data: Dataset) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """(flagged mask, suspicion scores, per-class summaries) for every sample of `data`."""

    def run(self, target: Target, data: Dataset | None = None, train_data: Dataset | None = None,
            **_: Dataset) -> Result:
        """Screen `train_data` (or `data` when no training set is given separately)."""
        self.check_access(target)
        data = require_data(train_data if train_data is not None else data, self.name, "--train-data FILE")
        validate_for_model(data, target.n_classes, target.input_shape)
        start = time.perf_counter()
        is_poison = load_ground_truth(self.ground_truth, len(data))
        flagged, scores, classes = self.screen(target, data)
        self.flagged_, self.scores_ = flagged, scores
        self.cleaned_ = data.subset(np.nonzero(~flagged)[0], f"{data.name} without {int(flagged.sum())} suspects")
        metrics = detection_metrics(flagged, scores, is_poison)
        metrics["classes"] = classes
        metrics["suspects"] = suspects(flagged, scores)
        if any("poisoned" in c for c in classes):  # screens that decide per class
            metrics["poisoned_classes"] = [c["class"] for c in classes if c["poisoned"]]
        return self.result(target, metrics, start)
