"""Input transforms as `nn.Module`s: quantisation (bit-depth reduction) and median smoothing.

Feature squeezing (Xu, Evans & Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural Networks",
NDSS 2018) reduces the colour bit depth and smooths with a median filter; both remove the small perturbations an
attacker relies on while keeping the image recognisable. Each transform is placed in front of a model
(`Transformed(transform, model)`), so the defended model is one module that exports like any other.

The transforms are not differentiable in any useful way (rounding has zero gradient almost everywhere), which
makes naive gradient attacks fail without the model being robust: gradient masking. Every transform therefore has
a straight-through form (`straight_through(model)`): the same forward values with the identity as backward, the
BPDA approximation of Athalye, Carlini & Wagner ("Obfuscated Gradients Give a False Sense of Security", ICML 2018).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from bastion.core.errors import ParameterError


class InputTransform(nn.Module, metaclass=ABCMeta):
    """Base class: `transform(x)` maps a batch inside `bounds` to a batch inside `bounds`.

    With `straight_through` set, the forward value is unchanged and the gradient is the identity (BPDA)."""

    def __init__(self, bounds: tuple[float, float] = (0.0, 1.0)):
        super().__init__()
        lo, hi = float(bounds[0]), float(bounds[1])
        if not lo < hi:
            raise ParameterError(f"bounds must satisfy low < high, got {bounds}")
        self.low, self.high = lo, hi
        self.straight_through = False

    @abstractmethod
    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The transformed batch, same shape, inside the bounds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.transform(x)
        if self.straight_through:
            return x + (out - x).detach()
        return out


class Quantize(InputTransform):
    """Uniform quantisation of every input value to `levels` evenly spaced values within the bounds.

    Bit-depth reduction to b bits (Xu et al. 2018) is `levels = 2**b`; x ↦ round(x·(L−1))/(L−1) on [0, 1]."""

    def __init__(self, levels: int = 16, bounds: tuple[float, float] = (0.0, 1.0)):
        super().__init__(bounds)
        if int(levels) < 2:
            raise ParameterError(f"quantisation needs at least 2 levels, got {levels}")
        self.levels = int(levels)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        span = self.high - self.low
        steps = self.levels - 1
        unit = ((x - self.low) / span).clamp(0.0, 1.0)
        return torch.round(unit * steps) / steps * span + self.low

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


def bit_depth(bits: int, bounds: tuple[float, float] = (0.0, 1.0)) -> Quantize:
    """Xu et al.'s bit-depth squeezer: quantisation to 2**bits levels (1 <= bits <= 16)."""
    if not 1 <= int(bits) <= 16:
        raise ParameterError(f"bit depth must be between 1 and 16, got {bits}")
    return Quantize(2 ** int(bits), bounds)


class MedianSmooth(InputTransform):
    """Median filter over a `window`×`window` neighbourhood of each pixel, per channel (Xu et al. 2018).

    Input (n, C, H, W) or (n, H, W). Borders repeat the edge pixels; an even window reaches one pixel further after
    the centre than before it and takes the lower median. The k² shifted copies are stacked and sorted, which
    exports to TorchScript and ONNX alike."""

    def __init__(self, window: int = 2, bounds: tuple[float, float] = (0.0, 1.0)):
        super().__init__(bounds)
        if int(window) < 2:
            raise ParameterError(f"the median window must be at least 2 pixels, got {window}")
        self.window = int(window)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4):
            raise ParameterError(f"median smoothing needs images (n, C, H, W) or (n, H, W), got {tuple(x.shape)}")
        image = x if x.dim() == 4 else x.unsqueeze(1)
        k = self.window
        before, after = (k - 1) // 2, k // 2
        padded = nn.functional.pad(image, (before, after, before, after), mode="replicate")
        height, width = image.shape[-2], image.shape[-1]
        shifted = [padded[..., i:i + height, j:j + width] for i in range(k) for j in range(k)]
        stacked = torch.stack(shifted, dim=-1)
        out = stacked.sort(dim=-1).values[..., (k * k - 1) // 2]
        return out if x.dim() == 4 else out.squeeze(1)

    def extra_repr(self) -> str:
        return f"window={self.window}"


def decided_by(scores: torch.Tensor, decision: torch.Tensor) -> torch.Tensor:
    """BPDA for a layer after the logits: `scores` (differentiable, e.g. the model's log-probabilities) with the
    class that `decision` (the transformed output) ranks first lifted to the top by a detached constant.

    The attack's loss then sees unsaturated scores, so its gradient is the one of the scores, while every
    decision is the transformed output's (argmax-equivalent, ties broken alike)."""
    label = decision.argmax(-1)
    fixed = scores.detach()
    gap = fixed.amax(-1) - fixed.gather(-1, label.unsqueeze(-1)).squeeze(-1)
    lift = torch.where(gap > 0, gap + 1e-3, torch.zeros_like(gap))
    return scores + nn.functional.one_hot(label, scores.shape[-1]).to(scores.dtype) * lift.unsqueeze(-1)


class Transformed(nn.Module):
    """`model(transform(x))`: a defended model built from an input transform and a classifier."""

    def __init__(self, transform: nn.Module, model: nn.Module):
        super().__init__()
        self.transform = transform
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(x))


def exportable(wrapper: nn.Module, inner: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """`wrapper` itself, or, when it wraps a TorchScript model (which ONNX export cannot trace through), the
    wrapper traced to TorchScript: the same values, saved by `--out` in every format."""
    if not any(isinstance(m, torch.jit.ScriptModule) for m in inner.modules()):
        return wrapper
    device = next(inner.parameters()).device
    with torch.no_grad():
        return torch.jit.trace(wrapper.eval(), torch.zeros(2, *input_shape, device=device), check_trace=False)


def transforms_in(model: nn.Module) -> list[nn.Module]:
    """The modules of `model` that have a straight-through form (input transforms, smoothed classifiers)."""
    return [m for m in model.modules() if hasattr(m, "straight_through")]


def has_transforms(model: nn.Module) -> bool:
    return bool(transforms_in(model))


@contextmanager
def straight_through(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, every transform of `model` back-propagates as the identity (BPDA); values are unchanged."""
    modules = transforms_in(model) if enabled else []
    saved = [m.straight_through for m in modules]
    for m in modules:
        m.straight_through = True
    try:
        yield model
    finally:
        for m, old in zip(modules, saved, strict=True):
            m.straight_through = old
