"""Per-sample attack losses on logits, and one forward-backward pass that returns loss, gradient and logits."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from bastion.core.errors import ParameterError
from bastion.core.target import Target

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def ce_loss(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the true class (untargeted, to maximise) or minus that of the target class."""
    if t is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, t, reduction="none")


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


def loss_and_grad(target: Target, x: torch.Tensor, y: torch.Tensor, loss: Loss = ce_loss,
                  t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample loss, its input gradient, and the logits, from one forward-backward pass."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = target.logits(x)
        value = loss(logits, y, t)
        grad = None
        if value.requires_grad:
            (grad,) = torch.autograd.grad(value.sum(), x, allow_unused=True)
    if grad is None:  # the model cut the graph (e.g. detach or no_grad inside forward): a zero gradient
        grad = torch.zeros_like(x)
    return value.detach(), grad.detach(), logits.detach()


def forward_logits(target: Target, x: torch.Tensor) -> torch.Tensor:
    """Logits without building a graph (an evaluation-only forward pass)."""
    with torch.no_grad():
        return target.logits(x.detach())
