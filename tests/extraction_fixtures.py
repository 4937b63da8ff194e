"""Shared helpers of the extraction tests: logistic-regression victims and fast attack settings."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import MinMaxScaler

from bastion.core.data import Dataset
from bastion.core.target import FunctionTarget

# Small training settings so that each learning-based attack runs in a few seconds on 2 cores.
FAST = {"epochs": 10, "min_steps": 80, "transfer_samples": 60, "ood_samples": 200, "monitor": False}


def logistic_victim(loader, C: float = 10.0) -> tuple[LogisticRegression, FunctionTarget, Dataset]:
    """A logistic regression on min-max scaled features, served in float64 (like Tramèr's cloud APIs)."""
    x, y = loader(return_X_y=True)
    x = MinMaxScaler().fit_transform(x).astype(np.float32)
    model = LogisticRegression(C=C, max_iter=5000).fit(x, y)
    n_classes = len(model.classes_)
    target = FunctionTarget(lambda a: model.predict_proba(a.astype(np.float64)), n_classes, (x.shape[1],),
                            "probabilities", name="logistic regression")
    return model, target, Dataset(x, y, "scaled")


def canonical(model: LogisticRegression) -> tuple[np.ndarray, np.ndarray]:
    """The model's parameters in the form equation solving reports (multinomial rows centred)."""
    weights, bias = model.coef_.astype(np.float64), model.intercept_.astype(np.float64)
    if len(model.classes_) > 2:
        weights, bias = weights - weights.mean(0), bias - bias.mean()
    return weights, bias
