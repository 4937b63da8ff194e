"""Shared pieces of data-screening defenses: feature-layer activations, ground truth, detection metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from bastion.core.errors import DataError, ParameterError
from bastion.evaluation.metrics import auc, detection_rates, roc_curve, tpr_at_fpr
from bastion.models.intermediate import layers, reader

CONV_TYPES = ("Conv1d", "Conv2d", "Conv3d")


def feature_layer(model: nn.Module, layer: str | None = None) -> tuple[str, bool]:
    """The layer whose activations represent an input (its name in the model) and whether to read its input.

    `layer` names a layer as the model's own `named_modules()` does (its output is read). By default: the input
    of the first linear layer after the last convolution (a CNN's penultimate representation, which the
    classifier head reads), or the input of the last linear layer for a model without convolutions (an MLP's
    last hidden layer). Works for eager, TorchScript and torch.export models alike."""
    named = layers(model)
    if layer:
        if layer not in dict(named):
            raise ParameterError(f"no layer named {layer!r}; layers are {', '.join(n for n, _ in named)}")
        return layer, False
    convs = [i for i, (_, kind) in enumerate(named) if kind in CONV_TYPES]
    linears = [i for i, (_, kind) in enumerate(named) if kind == "Linear"]
    if not linears:
        raise ParameterError("no linear layer to read features before: name a layer with --layer "
                             f"(layers are {', '.join(n for n, _ in named)})")
    after = [i for i in linears if convs and i > convs[-1]]
    return named[after[0] if after else linears[-1]][0], True


@torch.no_grad()
def representation(model: nn.Module, x: torch.Tensor, layer: str | None = None,
                   batch_size: int = 1024) -> torch.Tensor:
    """Activations of the feature layer (see `feature_layer`) for a batch of inputs, shape (n, d)."""
    name, read_input = feature_layer(model, layer)
    read = reader(model, name, read_input)
    was_training = model.training
    model.eval()
    try:
        return torch.cat([read(chunk).flatten(1) for chunk in x.split(batch_size)])
    finally:
        model.train(was_training)


def load_ground_truth(source: str | np.ndarray | None, n: int) -> np.ndarray | None:
    """Boolean poison mask: an array, or a path to an `.npz` with an `is_poison` array (or an `.npy`)."""
    if source is None:
        return None
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise DataError(f"ground truth not found: {path}")
        try:
            loaded = np.load(path, allow_pickle=False)
            mask = loaded["is_poison"] if isinstance(loaded, np.lib.npyio.NpzFile) else loaded
        except (KeyError, ValueError, OSError) as exc:
            raise DataError(f"{path}: expected an .npz with an 'is_poison' array or an .npy mask ({exc})") from None
    else:
        mask = source
    mask = np.asarray(mask).astype(bool).ravel()
    if len(mask) != n:
        raise DataError(f"ground truth has {len(mask)} entries but the data has {n} samples")
    return mask


def anomaly_index(values: np.ndarray) -> np.ndarray:
    """|v − median| / (1.4826 · MAD) for each value: a robust z-score (Hampel; as in Neural Cleanse)."""
    values = np.asarray(values, dtype=np.float64)
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median))
    return np.abs(values - median) / max(mad, 1e-12 * max(1.0, abs(median)))


def detection_metrics(flagged: np.ndarray, scores: np.ndarray, is_poison: np.ndarray | None,
                      fpr_budget: float = 0.1) -> dict:
    """Counts always; with ground truth also TPR/FPR of the flags, AUROC of the scores and TPR at `fpr_budget`."""
    metrics: dict = {"n_samples": len(flagged), "n_flagged": int(flagged.sum()),
                     "flagged_fraction": float(flagged.mean()) if len(flagged) else 0.0}
    if is_poison is None:
        return metrics
    metrics.update(detection_rates(flagged, is_poison))
    metrics["n_poison"] = int(is_poison.sum())
    if is_poison.any() and (~is_poison).any():
        fpr, tpr = roc_curve(scores[is_poison], scores[~is_poison])
        metrics["auroc"] = auc(fpr, tpr)
        metrics["tpr_at_fpr"] = {"fpr": fpr_budget, "tpr": tpr_at_fpr(fpr, tpr, fpr_budget)}
    return metrics
