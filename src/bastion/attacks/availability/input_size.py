"""Input-size and sequence-length maximisation for models that accept variable-size inputs.

Many models (fully convolutional networks with adaptive pooling, sequence models) accept inputs larger than those
they were trained on, and their cost grows with the input: the simplest availability attack sends the largest
input the model accepts (OWASP LLM10 "unbounded consumption": variable-length input flood). This attack grows
the natural inputs' spatial or sequence dimensions by a factor 2 at a time (nearest-neighbour resampling, values
kept in bounds) until the model refuses an input, a single input takes longer than `max_ms`, or `max_scale` is
reached, and reports the per-input latency at each accepted size against the natural size.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bastion.attacks.availability import measure
from bastion.attacks.base import Attack
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.results import Result
from bastion.core.target import Access, Target


def grow(x: torch.Tensor, scale: int) -> torch.Tensor:
    """`x` (n, C, *spatial) or (n, L) resized by `scale` along its spatial (or sequence) dimensions."""
    if x.dim() == 2:
        return x.repeat_interleave(scale, dim=1)
    return F.interpolate(x, scale_factor=scale, mode="nearest")


@register("attacks", "input-size", family="availability")
class InputSize(Attack):
    """Input-size maximisation: the largest input the model accepts, and what it costs per input.

    Sizes grow ×2 up to `max_scale` per dimension; a size whose median latency over `repeats` exceeds `max_ms`
    stops the search (`n_inputs` natural inputs are grown; `threads` torch threads). Input size as a sponge
    dimension: Shumailov et al., EuroS&P 2021.

    Example:
        >>> result = InputSize(max_scale=16, max_ms=1000).run(target, data)  # doctest: +SKIP
    """

    family = "availability"
    name = "input-size"
    requires = Access.GRADIENTS

    def __init__(self, *, max_scale: int = 16, max_ms: float = 1000.0, n_inputs: int = 16, repeats: int = 5,
                 threads: int = 1, n_bootstrap: int = 1000, seed: int = 0):
        if max_scale < 2 or max_ms <= 0 or n_inputs < 1 or repeats < 1 or threads < 1:
            raise ParameterError("max_scale >= 2, max_ms > 0, n_inputs, repeats and threads >= 1")
        self.max_scale, self.max_ms, self.n_inputs = int(max_scale), float(max_ms), int(n_inputs)
        self.repeats, self.threads, self.n_bootstrap, self.seed = int(repeats), int(threads), int(n_bootstrap), seed

    def _latencies(self, target: Target, model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
        out = np.empty(len(x))
        with measure.fixed_threads(self.threads), torch.no_grad():
            model(x[:1])  # warm-up at this size
            for i in range(len(x)):
                times = []
                for _ in range(self.repeats):
                    target.counter.charge(1)
                    start = time.perf_counter()
                    model(x[i:i + 1])
                    times.append(time.perf_counter() - start)
                out[i] = float(np.median(times))
        return out * 1e3

    def run(self, target: Target, data: Dataset, **kwargs: Any) -> Result:
        self.check_access(target)
        start = time.perf_counter()
        model = measure.white_box_model(target, "input-size")
        x = torch.as_tensor(data.x[: self.n_inputs], dtype=torch.float32, device=target.device)
        natural = self._latencies(target, model, x)
        sizes, largest, refused = [], (1, natural), ""
        scale = 2
        while scale <= self.max_scale:
            big = grow(x, scale).clamp(*target.bounds)
            try:
                with torch.no_grad():
                    model(big[:1])
            except Exception as exc:  # the model refuses this size: its limit  # noqa: BLE001
                refused = f"refused at ×{scale} ({type(exc).__name__})"
                break
            ms = self._latencies(target, model, big)
            sizes.append({"scale": scale, "shape": list(big.shape[1:]), "latency_ms": measure.percentiles_ms(ms)})
            largest = (scale, ms)
            if float(np.median(ms)) > self.max_ms:
                break
            scale *= 2
        dim = {"metric": "input_size", "natural": measure.percentiles_ms(natural),
               "attack": measure.percentiles_ms(largest[1]),
               "ratio": measure.ratio(largest[1], natural, self.n_bootstrap, self.seed)}
        metrics = {"n": len(x), "threads": self.threads, "natural_shape": list(x.shape[1:]), "sizes": sizes,
                   "largest_accepted_scale": largest[0], "limit": refused or f"none up to ×{self.max_scale}",
                   "dimensions": [dim] if sizes else []}
        return Result(family=self.family, attack=self.name, params=self.get_params(), metrics=metrics,
                      queries=target.queries, seconds=time.perf_counter() - start, device=str(target.device))
