"""Backdoor triggers applied to whole batches: a BadNets patch and a Blended pattern.

Inputs are (n, *shape) tensors within `bounds`. Image-shaped inputs (c, h, w) get the patch in a corner of
every channel; flat inputs (d,) get it on their last `size` features. Every trigger is deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bastion.core.errors import ParameterError

CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")


def checkerboard(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A (size, size) 0/1 checkerboard with 1 in the corners (the BadNets-style pattern)."""
    i = torch.arange(size, device=device)
    return ((i[:, None] + i[None, :]) % 2 == 0).float()


def patch_slices(shape: Sequence[int], size: int, corner: str) -> tuple[slice, ...]:
    """Index (without the batch axis) of a size×size corner patch for images, or the last `size` features."""
    if corner not in CORNERS:
        raise ParameterError(f"unknown corner {corner!r}: use one of {', '.join(CORNERS)}")
    if len(shape) == 1:
        if size > shape[0]:
            raise ParameterError(f"patch of {size} features does not fit {shape[0]} features")
        return (slice(shape[0] - size, shape[0]),)
    h, w = shape[-2], shape[-1]
    if size > min(h, w):
        raise ParameterError(f"patch of {size}x{size} does not fit inputs of {h}x{w}")
    rows = slice(h - size, h) if corner.startswith("bottom") else slice(0, size)
    cols = slice(w - size, w) if corner.endswith("right") else slice(0, size)
    return (*([slice(None)] * (len(shape) - 2)), rows, cols)


def apply_patch(x: torch.Tensor, size: int = 3, corner: str = "bottom-right",
                bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """BadNets trigger (Gu et al. 2017): stamp a checkerboard of the bounds' extremes onto every input."""
    shape = tuple(x.shape[1:])
    index = (slice(None), *patch_slices(shape, size, corner))
    lo, hi = bounds
    board = checkerboard(size, x.device)
    values = lo + (hi - lo) * (board if len(shape) > 1 else board[0])
    out = x.clone()
    out[index] = values.to(x.dtype)
    return out


def blend_pattern(shape: Sequence[int], seed: int, bounds: tuple[float, float] = (0.0, 1.0),
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """A fixed uniform-noise key pattern (Chen et al. 2017 'random pattern' key) of one input's shape."""
    gen = torch.Generator().manual_seed(int(seed))
    lo, hi = bounds
    return (lo + (hi - lo) * torch.rand(tuple(shape), generator=gen)).to(device)


def apply_blend(x: torch.Tensor, pattern: torch.Tensor, alpha: float) -> torch.Tensor:
    """Blended trigger (Chen et al. 2017): x' = (1 − α)·x + α·k for a key pattern k."""
    return (1.0 - alpha) * x + alpha * pattern.to(x.device, x.dtype)
