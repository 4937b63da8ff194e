"""Label flipping: random (availability) and targeted (source class → target class)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from bastion.attacks.backdoor.base import Poisoned, PoisoningAttack, choose
from bastion.core.errors import ParameterError
from bastion.core.registry import register


@register("attacks", "labelflip", family="backdoor",
          summary="random or targeted label flipping of the training set (Biggio 2012)")
class LabelFlip(PoisoningAttack):
    """Label-flipping poisoning (Biggio, Nelson & Laskov, "Poisoning Attacks against SVMs", ICML 2012, random
    flips as the baseline; Xiao, Xiao & Eckert, "Adversarial Label Flips Attack", ECAI 2012).

    `mode="random"`: a random `poison_rate` fraction of the training labels is replaced by a different class,
    drawn uniformly; the harm is the drop in clean accuracy. `mode="targeted"`: up to `poison_rate`·n samples of
    `source_label` are relabelled `target_label`; the attack succeeds when clean test inputs of the source class
    are classified as the target (reported as attack success rate).

    Example:
        >>> from bastion.attacks.backdoor.label_flip import LabelFlip
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> train_data = load_dataset("train.npz")
        >>> result = LabelFlip().run(target, data, train_data=train_data)
        >>> from bastion.families import judged  # the threat family judges what the run measured
        >>> judged(result).findings
    """

    name = "labelflip"

    def __init__(self, arch: str | Callable[[], nn.Module] | None = None,
                 *, poison_rate: float | str | Sequence[float] = 0.1, mode: str = "random", target_label: int = 0,
                 source_label: int = 1, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                 save_dir: str | None = None):
        super().__init__(arch, poison_rate=poison_rate, target_label=target_label, epochs=epochs, batch_size=batch_size,
                         lr=lr, seed=seed, save_dir=save_dir)
        if mode not in ("random", "targeted"):
            raise ParameterError(f"mode must be random or targeted, got {mode!r}")
        if mode == "targeted" and int(source_label) == int(target_label):
            raise ParameterError("source_label and target_label must differ for a targeted flip")
        self.mode, self.source_label = mode, int(source_label)

    def poison(self, x: torch.Tensor, y: torch.Tensor, rate: float, gen: torch.Generator) -> Poisoned:
        n = round(rate * len(y))
        yp = y.clone()
        if self.mode == "targeted":
            idx = choose(y == self.source_label, n, gen)
            yp[idx] = self.target_label
        else:
            idx = choose(torch.ones_like(y, dtype=torch.bool), n, gen)
            shift = torch.randint(1, self.n_classes_, (len(idx),), generator=gen).to(y.device)
            yp[idx] = (y[idx] + shift) % self.n_classes_  # any class but the true one, uniformly
        mask = torch.zeros_like(y, dtype=torch.bool)
        mask[idx] = True
        return Poisoned(x, yp, mask)

    def triggered(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.mode == "random":
            return None
        if self.source_label >= self.n_classes_:
            raise ParameterError(f"source_label {self.source_label} is not a class of the model")
        keep = y == self.source_label
        return x[keep], torch.full_like(y[keep], self.target_label)
