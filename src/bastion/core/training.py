"""The one training loop: PyTorch models and scikit-learn estimators, shared by every family.

Poisoning, backdoors, shadow and reference models, extraction substitutes and hardening all train through
`Trainer.fit`. Extensions plug in through `batch_hook` (e.g. adversarial training replaces a batch by its
adversarial version) and `loss_fn`; `make_optimizer` can be overridden (e.g. DP-SGD wraps it).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.core.device import resolve_device
from bastion.core.errors import ParameterError
from bastion.core.progress import progress

BatchHook = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class TrainHistory:
    """Loss and accuracy per epoch."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)


@dataclass
class Trainer:
    """Mini-batch training of a PyTorch classifier (cross-entropy on logits), deterministic for a seed on CPU."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    seed: int = 0
    device: str = "auto"
    show_progress: bool = False
    description: str = "training"
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field(default_factory=nn.CrossEntropyLoss)
    batch_hook: BatchHook | None = None
    history: TrainHistory = field(default_factory=TrainHistory)

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ParameterError("epochs must be >= 0, batch_size >= 1 and lr > 0")
        if self.optimizer not in ("adam", "sgd", "adamw"):
            raise ParameterError(f"unknown optimizer {self.optimizer!r}: use adam, adamw or sgd")

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)

    def fit(self, model: nn.Module, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor,
            optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
        """Train `model` in place on (x, y) and return it in eval mode."""
        generator = seed_everything(self.seed)
        device = resolve_device(self.device)
        model.to(device)
        xs = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
        ys = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
        soft = ys.is_floating_point() and ys.dim() == 2  # soft targets (n, n_classes) for a custom loss_fn
        ys = ys.float() if soft else ys.long()
        xs, ys = xs.to(device), ys.to(device)
        if len(xs) != len(ys) or len(xs) == 0:
            raise ParameterError(f"training data has {len(xs)} inputs and {len(ys)} labels")
        optimizer = optimizer or self.make_optimizer(model)
        n_batches = (len(xs) + self.batch_size - 1) // self.batch_size
        with progress(self.epochs * n_batches, self.description, enabled=self.show_progress) as bar:
            for epoch in range(self.epochs):
                model.train()
                order = torch.randperm(len(xs), generator=generator).to(device)
                total_loss = torch.zeros((), device=device)
                correct = torch.zeros((), device=device)
                for idx in order.split(self.batch_size):
                    xb, yb = xs[idx], ys[idx]
                    if self.batch_hook is not None:
                        xb, yb = self.batch_hook(model, xb, yb, epoch)
                        model.train()
                    out = model(xb)
                    loss = self.loss_fn(out, yb)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total_loss += loss.detach() * len(yb)
                    correct += (out.detach().argmax(-1) == (yb.argmax(-1) if soft else yb)).sum()
                    bar.advance()
                self.history.loss.append(float(total_loss) / len(xs))
                self.history.accuracy.append(float(correct) / len(xs))
        return model.eval()

    def fit_estimator(self, estimator: Any, x: np.ndarray, y: np.ndarray) -> Any:
        """scikit-learn: `clone(estimator).fit(x, y)`, seeded where the estimator has a random_state."""
        from sklearn.base import clone

        fresh = clone(estimator)
        if "random_state" in fresh.get_params():
            fresh.set_params(random_state=self.seed)
        return fresh.fit(np.asarray(x).reshape(len(x), -1), np.asarray(y))


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode with its parameters' gradients off (an input-space optimisation against it), restored
    as it was afterwards."""
    was_training, trainable = model.training, [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), trainable, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Labels predicted by `model` (in eval mode) for a batch of inputs, in chunks."""
    model.eval()
    return torch.cat([model(chunk).argmax(-1) for chunk in x.split(batch_size)])


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor,
             batch_size: int = 1024) -> float:
    """Accuracy of a PyTorch classifier on (x, y), evaluated on the model's device."""
    device = next(model.parameters()).device
    xs = torch.as_tensor(x, dtype=torch.float32)
    ys = torch.as_tensor(y, dtype=torch.long)
    model.eval()
    correct = 0
    for xb, yb in zip(xs.split(batch_size), ys.split(batch_size), strict=True):
        correct += int((model(xb.to(device)).argmax(-1).cpu() == yb).sum())
    return correct / max(1, len(ys))
