"""Transfer attacks: adversarial examples crafted on a surrogate model, tested on the target."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bastion.attacks.evasion.base import EvasionAttack
from bastion.attacks.evasion.wrappers import build_attack
from bastion.core.data import Dataset
from bastion.core.errors import AccessError, ParameterError
from bastion.core.registry import register
from bastion.core.results import Result
from bastion.core.target import Access, Target, TorchTarget


def surrogate_target(surrogate: Any, target: Target, data: Dataset | None = None, arch: str | None = None) -> Target:
    """A white-box Target for `surrogate`: an nn.Module, a Target with gradients, or a model path (loaded with
    `bastion.models.load_target`). It must share the target's input shape and classes."""
    if surrogate is None:
        raise ParameterError("the transfer attack needs a surrogate model (--surrogate PATH)")
    if isinstance(surrogate, nn.Module):
        sur: Target = TorchTarget(surrogate, target.input_shape, n_classes=target.n_classes, bounds=target.bounds,
                                  device=target.device, name="surrogate")
    elif isinstance(surrogate, Target):
        sur = surrogate
    elif isinstance(surrogate, (str, Path)):
        from bastion.models import load_target

        sur = load_target(surrogate, data=data, arch=arch, device=str(target.device), bounds=target.bounds)
    else:
        raise ParameterError(f"surrogate must be a model path or a torch.nn.Module, not {type(surrogate).__name__}")
    if sur.access < Access.GRADIENTS:
        raise AccessError(f"the surrogate {sur.name} must grant gradients (a PyTorch model)")
    if sur.n_classes != target.n_classes or tuple(sur.input_shape) != tuple(target.input_shape):
        raise ParameterError(f"the surrogate ({sur.n_classes} classes, input {tuple(sur.input_shape)}) does not "
                             f"match the target ({target.n_classes} classes, input {tuple(target.input_shape)})")
    return sur


@register("attacks", "transfer", family="evasion",
          summary="Transfer from a surrogate model (--surrogate PATH), labels only")
class Transfer(EvasionAttack):
    """Transfer attack (Szegedy et al., ICLR 2014; Papernot, McDaniel & Goodfellow, 2016): run a white-box
    `attack` on a `surrogate` model (e.g. a substitute stolen with an extraction attack) and count the examples
    that also fool the target. Needs only the target's labels; the surrogate must be a PyTorch model.

    Example:
        >>> from bastion.attacks.evasion.transfer import Transfer
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = Transfer().run(target, data)
        >>> result.metrics["robust_accuracy"]
    """

    name = "transfer"
    requires = Access.LABELS
    prepass = False

    def __init__(self, surrogate: str | nn.Module | Target | None = None, *, attack: str = "apgd-ce",
                 eps: float | str | Sequence[float] = 8 / 255, norm: str = "linf", steps: int | None = None,
                 restarts: int | None = None, surrogate_arch: str | None = None, seed: int = 0):
        super().__init__(eps, norm=norm, seed=seed)
        self.surrogate, self.attack, self.surrogate_arch = surrogate, attack, surrogate_arch
        self.steps, self.restarts = steps, restarts
        self._inner = build_attack(attack, self.eps, self.norm, self.seed, steps=steps, restarts=restarts)
        if not isinstance(self._inner, EvasionAttack) or self._inner.requires < Access.GRADIENTS:
            raise ParameterError(f"transfer needs a white-box attack to run on the surrogate, not {attack!r}")
        self._surrogate: Target | None = None

    def bind(self, target: Target, data: Dataset | None = None) -> Transfer:
        """Resolve the surrogate against `target` (done by `run`; call it before using `perturb` directly)."""
        self._surrogate = surrogate_target(self.surrogate, target, data, self.surrogate_arch)
        return self

    def perturb(self, target: Target, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        if self._surrogate is None:
            self.bind(target)
        assert self._surrogate is not None
        return self._inner.perturb(self._surrogate, x, y, eps)

    def run(self, target: Target, data: Dataset, **_: Any) -> Result:
        self.check_access(target)
        self.bind(target, data)
        return super().run(target, data)
