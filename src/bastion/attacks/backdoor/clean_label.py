"""Clean-label (label-consistent) backdoor: triggered target-class samples made hard by adversarial noise."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from bastion.attacks.backdoor.base import Poisoned, PoisoningAttack, choose
from bastion.attacks.backdoor.triggers import CORNERS, apply_patch
from bastion.attacks.evasion.gradient import PGD
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import TorchTarget


@register("attacks", "clean-label", family="backdoor",
          summary="label-consistent backdoor: perturbed target-class samples plus a trigger (Turner 2019)")
class CleanLabel(PoisoningAttack):
    """Label-consistent backdoor (Turner, Tsipras & Madry, "Label-Consistent Backdoor Attacks", 2019).

    Only samples of `target_label` are poisoned and their labels stay correct, so a human audit of the labels
    finds nothing. Each is first pushed away from its class by an L∞ PGD perturbation of size `eps` (default
    16/255, the paper's CIFAR-10 budget; tiny images need more) computed on a surrogate model trained on the clean
    data (so the model cannot classify it from its content and leans on the trigger), then stamped with the patch
    trigger scaled by `trigger_amplitude`. `poison_rate` is a fraction of the whole training set (capped at the
    size of the target class); test inputs carry the full-strength patch.

    Example:
        >>> from bastion.attacks.backdoor.clean_label import CleanLabel
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> train_data = load_dataset("train.npz")
        >>> result = CleanLabel().run(target, data, train_data=train_data)
        >>> from bastion.families import judged  # the threat family judges what the run measured
        >>> judged(result).findings
    """

    name = "clean-label"

    def __init__(self, arch: str | Callable[[], nn.Module] | None = None,
                 *, poison_rate: float | str | Sequence[float] = 0.05, target_label: int = 0, eps: float = 16 / 255,
                 pgd_steps: int = 20, patch_size: int = 3, corner: str = "bottom-right",
                 trigger_amplitude: float = 1.0, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3,
                 seed: int = 0, save_dir: str | None = None):
        super().__init__(arch, poison_rate=poison_rate, target_label=target_label, epochs=epochs, batch_size=batch_size,
                         lr=lr, seed=seed, save_dir=save_dir)
        if eps < 0 or pgd_steps < 1 or patch_size < 1 or corner not in CORNERS:
            raise ParameterError("eps must be >= 0, pgd_steps and patch_size >= 1, corner a known corner")
        if not 0.0 < trigger_amplitude <= 1.0:
            raise ParameterError(f"trigger_amplitude must lie in (0, 1], got {trigger_amplitude}")
        self.eps, self.pgd_steps, self.patch_size, self.corner = float(eps), int(pgd_steps), int(patch_size), corner
        self.trigger_amplitude = float(trigger_amplitude)

    def prepare(self, factory: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor) -> None:
        """Train the surrogate (another seed) and perturb every target-class sample once."""
        self.hard_ = x.clone()
        own = (y == self.target_label).nonzero().flatten()
        if self.eps > 0 and len(own):
            surrogate = self.train(factory, x, y, seed_offset=1)
            view = TorchTarget(surrogate, tuple(x.shape[1:]), self.n_classes_, self.bounds_, x.device)
            pgd = PGD(eps=self.eps, steps=self.pgd_steps, random_init=False, seed=self.seed)
            self.hard_[own] = pgd.perturb(view, x[own], y[own], self.eps)

    def stamp(self, x: torch.Tensor, amplitude: float) -> torch.Tensor:
        return x + amplitude * (apply_patch(x, self.patch_size, self.corner, self.bounds_) - x)

    def poison(self, x: torch.Tensor, y: torch.Tensor, rate: float, gen: torch.Generator) -> Poisoned:
        idx = choose(y == self.target_label, round(rate * len(y)), gen)
        xp = x.clone()
        xp[idx] = self.stamp(self.hard_[idx], self.trigger_amplitude)
        mask = torch.zeros_like(y, dtype=torch.bool)
        mask[idx] = True
        return Poisoned(xp, y.clone(), mask)

    def triggered(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = y != self.target_label
        return self.stamp(x[keep], 1.0), torch.full_like(y[keep], self.target_label)
