"""BadNets and Blended: dirty-label backdoors planted by relabelled triggered samples."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import nn

from bastion.attacks.backdoor.base import Poisoned, PoisoningAttack, choose
from bastion.attacks.backdoor.triggers import CORNERS, apply_blend, apply_patch, blend_pattern
from bastion.core.errors import ParameterError
from bastion.core.registry import register


class DirtyLabelBackdoor(PoisoningAttack):
    """Stamp the trigger on `poison_rate`·n training samples of other classes and relabel them as the target."""

    @abstractmethod
    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        ...

    def poison(self, x: torch.Tensor, y: torch.Tensor, rate: float, gen: torch.Generator) -> Poisoned:
        idx = choose(y != self.target_label, round(rate * len(y)), gen)
        xp, yp = x.clone(), y.clone()
        xp[idx] = self.apply_trigger(x[idx])
        yp[idx] = self.target_label
        mask = torch.zeros_like(y, dtype=torch.bool)
        mask[idx] = True
        return Poisoned(xp, yp, mask)

    def triggered(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = y != self.target_label
        return self.apply_trigger(x[keep]), torch.full_like(y[keep], self.target_label)


@register("attacks", "badnets", family="backdoor",
          summary="patch-trigger backdoor planted through relabelled training samples (Gu 2017)")
class BadNets(DirtyLabelBackdoor):
    """BadNets patch backdoor (Gu, Dolan-Gavitt & Garg, "BadNets", 2017).

    A `patch_size`×`patch_size` checkerboard of the input bounds' extremes in one corner (or the last features of
    flat inputs) is stamped on a random `poison_rate` fraction of the training set, drawn from the classes other
    than `target_label`, and those samples are relabelled `target_label` (all-to-one attack).

    Example:
        >>> from bastion.attacks.backdoor.badnets import BadNets
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> train_data = load_dataset("train.npz")
        >>> result = BadNets().run(target, data, train_data=train_data)
        >>> from bastion.families import judged  # the threat family judges what the run measured
        >>> judged(result).findings
    """

    name = "badnets"

    def __init__(self, arch: str | Callable[[], nn.Module] | None = None,
                 *, poison_rate: float | str | Sequence[float] = 0.05, target_label: int = 0, patch_size: int = 3,
                 corner: str = "bottom-right", epochs: int = 20, batch_size: int = 64, lr: float = 1e-3,
                 seed: int = 0, save_dir: str | None = None):
        super().__init__(arch, poison_rate=poison_rate, target_label=target_label, epochs=epochs, batch_size=batch_size,
                         lr=lr, seed=seed, save_dir=save_dir)
        if patch_size < 1 or corner not in CORNERS:
            raise ParameterError(f"patch_size must be >= 1 and corner one of {', '.join(CORNERS)}")
        self.patch_size, self.corner = int(patch_size), corner

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        return apply_patch(x, self.patch_size, self.corner, self.bounds_)


@register("attacks", "blended", family="backdoor",
          summary="blended-noise-trigger backdoor (Chen 2017)")
class Blended(DirtyLabelBackdoor):
    """Blended-injection backdoor (Chen, Liu, Li, Lu & Song, "Targeted Backdoor Attacks on Deep Learning Systems
    Using Data Poisoning", 2017).

    Poisoned inputs are x' = (1 − α)·x + α·k with a fixed random-noise key k (seeded by `pattern_seed`); the same
    blend is applied at test time. Samples come from the classes other than `target_label` and are relabelled.

    Example:
        >>> from bastion.attacks.backdoor.badnets import Blended
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> train_data = load_dataset("train.npz")
        >>> result = Blended().run(target, data, train_data=train_data)
        >>> from bastion.families import judged  # the threat family judges what the run measured
        >>> judged(result).findings
    """

    name = "blended"

    def __init__(self, arch: str | Callable[[], nn.Module] | None = None,
                 *, poison_rate: float | str | Sequence[float] = 0.05, target_label: int = 0, alpha: float = 0.2,
                 pattern_seed: int = 1234, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3,
                 seed: int = 0, save_dir: str | None = None):
        super().__init__(arch, poison_rate=poison_rate, target_label=target_label, epochs=epochs, batch_size=batch_size,
                         lr=lr, seed=seed, save_dir=save_dir)
        if not 0.0 < alpha < 1.0:
            raise ParameterError(f"alpha must lie in (0, 1), got {alpha}")
        self.alpha, self.pattern_seed = float(alpha), int(pattern_seed)

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        key = blend_pattern(x.shape[1:], self.pattern_seed, self.bounds_, x.device)
        return apply_blend(x, key, self.alpha)
