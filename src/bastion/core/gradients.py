"""One forward-backward pass through a Target: per-sample loss, its input gradient and the logits.

Shared by the gradient attacks and by the sanity checks that look for masked gradients (they sit in different
layers, so the pass lives here, below both).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from bastion.core.target import Target

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def ce_loss(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the true class (untargeted, to maximise) or minus that of the target class."""
    if t is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, t, reduction="none")


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
