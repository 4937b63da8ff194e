"""Per-sample attack losses on logits (the forward-backward pass itself is `bastion.core.gradients`)."""

from __future__ import annotations

import torch

from bastion.core.errors import ParameterError
from bastion.core.gradients import Loss, ce_loss


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y − max_{j≠y} z_j: positive while the sample is classified correctly."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -float("inf")).amax(dim=1)
    return true - other


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein, ICML 2020), shift- and scale-invariant in the logits.

    Untargeted: −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3); targeted: −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2),
    with π the logits sorted in decreasing order. Needs at least 3 (untargeted) or 4 (targeted) classes."""
    top = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    if t is None:
        return -margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)
    tgt = logits.gather(1, t[:, None]).squeeze(1)
    return -(true - tgt) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


LOSSES: dict[str, Loss] = {"ce": ce_loss, "dlr": dlr_loss}


def get_loss(name: str, n_classes: int, targeted: bool = False) -> Loss:
    """The loss named `name`, refusing DLR when there are too few classes for it (sanity check 10)."""
    if name not in LOSSES:
        raise ParameterError(f"unknown loss {name!r}: use {' or '.join(LOSSES)}")
    need = 4 if targeted else 3
    if name == "dlr" and n_classes < need:
        kind = "targeted DLR" if targeted else "DLR"
        raise ParameterError(f"{kind} needs at least {need} classes, the model has {n_classes}: use the ce loss")
    return LOSSES[name]
