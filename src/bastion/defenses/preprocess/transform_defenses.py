"""Input-transform defenses: `squeeze` (bit depth), `quantize` (levels) and `spatial-smooth` (median filter).

Each wraps the model behind a transform of its inputs (Xu, Evans & Qi, NDSS 2018), yields the defended model
(`artifact_`, saved by the CLI's `--out`) or, for a black box, a defended Target, and reports the honest
before/after comparison of `compare`: adaptive attacks use BPDA through the transform, so a defense that only
masks gradients is reported as such.
"""

from __future__ import annotations

import time
from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from bastion.attacks.evasion.base import parse_eps
from bastion.attacks.evasion.norms import check_norm
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.results import Result
from bastion.core.target import Access, Target, TargetView, TorchTarget
from bastion.defenses.base import Defense, require_data
from bastion.defenses.before_after import clean_comparison, compare
from bastion.defenses.preprocess.transforms import (
    InputTransform,
    MedianSmooth,
    Quantize,
    Transformed,
    bit_depth,
    exportable,
)


class TransformedTarget(TargetView):
    """A black-box target queried through an input transform; it grants what the base grants, up to scores."""

    def __init__(self, base: Target, transform: InputTransform):
        super().__init__(base, access=min(base.access, Access.SCORES),
                         name=f"{base.name} + {type(transform).__name__.lower()}")
        self.transform = transform

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.base._forward(self.transform(x.detach()))


def defend_target(target: Target, transform: InputTransform) -> Target:
    """The target seen through `transform`: a white-box model when the target is one, else a black box."""
    if isinstance(target, TorchTarget):
        model = Transformed(transform, target.model).to(target.device).eval()
        return TorchTarget(model, target.input_shape, target.n_classes, target.bounds, target.device,
                           target.access, None, target.batch_size, f"{target.name} + {transform.extra_repr()}")
    return TransformedTarget(target, transform)


class InputTransformDefense(Defense, metaclass=ABCMeta):
    """Base: subclasses implement `make_transform(bounds)`; evaluation parameters are shared."""

    family: ClassVar[str] = "preprocess"
    requires: ClassVar[Access] = Access.LABELS

    def _evaluation(self, eps: float | str | Sequence[float] | None, norm: str, attack: str, eot_samples: int,
                    seed: int) -> None:
        self.eps = None if eps is None else parse_eps(eps)
        self.norm, self.attack = check_norm(norm), str(attack)
        if int(eot_samples) < 1:
            raise ParameterError("eot_samples must be at least 1")
        self.eot_samples, self.seed = int(eot_samples), int(seed)

    @abstractmethod
    def make_transform(self, bounds: tuple[float, float]) -> InputTransform:
        """The transform for inputs within `bounds`."""

    def run(self, target: Target, data: Dataset | None = None, **_: Any) -> Result:
        data = require_data(data, f"defense '{self.name}'")
        self.check_access(target)
        start, queries = time.perf_counter(), target.queries
        transform = self.make_transform(target.bounds)
        defended = defend_target(target, transform)
        if self.eps is None:
            metrics = clean_comparison(target, defended, data)
        else:
            metrics = compare(target, defended, data, self.eps, self.norm, self.attack, self.eot_samples,
                              self.seed, what=f"{self.name} ({transform.extra_repr()})")
        self.defended_ = defended
        self.artifact_ = None
        if isinstance(defended, TorchTarget) and isinstance(target, TorchTarget):
            self.artifact_ = exportable(defended.model, target.model, target.input_shape)
        return self.result(target, metrics, start, queries)


@register("defenses", "squeeze", family="preprocess")
class Squeeze(InputTransformDefense):
    """Feature squeezing by bit-depth reduction to `bits` bits (Xu, Evans & Qi, NDSS 2018).

    Example:
        >>> from bastion.defenses.preprocess.transform_defenses import Squeeze
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = Squeeze(bits=4).run(target, data)
        >>> result.findings
    """

    name = "squeeze"

    def __init__(self, bits: int = 4, *, eps: float | str | Sequence[float] | None = 8 / 255,
                 norm: str = "linf", attack: str = "auto", eot_samples: int = 8, seed: int = 0):
        self.bits = int(bits)
        bit_depth(self.bits)  # validates the range
        self._evaluation(eps, norm, attack, eot_samples, seed)

    def make_transform(self, bounds: tuple[float, float]) -> InputTransform:
        return bit_depth(self.bits, bounds)


@register("defenses", "quantize", family="preprocess")
class QuantizeDefense(InputTransformDefense):
    """Uniform quantisation of the inputs to `levels` values (bit-depth reduction generalised; Xu et al. 2018).

    Example:
        >>> from bastion.defenses.preprocess.transform_defenses import QuantizeDefense
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = QuantizeDefense(levels=8).run(target, data)
        >>> result.findings
    """

    name = "quantize"

    def __init__(self, levels: int = 8, *, eps: float | str | Sequence[float] | None = 8 / 255,
                 norm: str = "linf", attack: str = "auto", eot_samples: int = 8, seed: int = 0):
        self.levels = int(levels)
        Quantize(self.levels)
        self._evaluation(eps, norm, attack, eot_samples, seed)

    def make_transform(self, bounds: tuple[float, float]) -> InputTransform:
        return Quantize(self.levels, bounds)


@register("defenses", "spatial-smooth", family="preprocess")
class SpatialSmooth(InputTransformDefense):
    """Spatial smoothing with a `window`×`window` median filter (Xu, Evans & Qi, NDSS 2018). Images only.

    Example:
        >>> from bastion.defenses.preprocess.transform_defenses import SpatialSmooth
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = SpatialSmooth(window=2).run(target, data)
        >>> result.findings
    """

    name = "spatial-smooth"

    def __init__(self, window: int = 2, *, eps: float | str | Sequence[float] | None = 8 / 255,
                 norm: str = "linf", attack: str = "auto", eot_samples: int = 8, seed: int = 0):
        self.window = int(window)
        MedianSmooth(self.window)
        self._evaluation(eps, norm, attack, eot_samples, seed)

    def make_transform(self, bounds: tuple[float, float]) -> InputTransform:
        return MedianSmooth(self.window, bounds)

    def run(self, target: Target, data: Dataset | None = None, **kwargs: Any) -> Result:
        if len(target.input_shape) not in (2, 3):
            raise ParameterError(f"spatial smoothing needs image inputs (C, H, W); the model takes "
                                 f"{tuple(target.input_shape)}")
        return super().run(target, data, **kwargs)
