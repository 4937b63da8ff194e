"""Shared pieces of data-screening defenses: penultimate-layer features, ground truth, detection metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from bastion.core.errors import DataError, ParameterError
from bastion.evaluation.metrics import auc, detection_rates, roc_curve, tpr_at_fpr


def last_module(model: nn.Module, kinds: tuple[type[nn.Module], ...], what: str) -> nn.Module:
    """The last sub-module of one of `kinds` in registration order (the classifier head for nn.Linear)."""
    found = [m for m in model.modules() if isinstance(m, kinds)]
    if not found:
        names = ", ".join(k.__name__ for k in kinds)
        raise ParameterError(f"{what} needs a model with a {names} layer")
    return found[-1]


@torch.no_grad()
def penultimate(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Inputs of the model's last linear layer (the representation the classifier reads), shape (n, d)."""
    head = last_module(model, (nn.Linear,), "reading penultimate activations")
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].flatten(1)))
    model.eval()
    try:
        for chunk in x.split(batch_size):
            model(chunk)
    finally:
        hook.remove()
    return torch.cat(captured)


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
