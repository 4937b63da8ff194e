"""Availability measurements: latency, throughput, activation density, energy, as amplification ratios.

Latency is measured per input (batch of one), after warm-up, with a fixed number of torch threads, as the median of
`repeats` timings; the figures are percentiles over inputs. Activation density is the fraction of non-zero outputs
of the activation layers, the energy proxy of sponge examples (Shumailov et al., "Sponge Examples: Energy-Latency
Attacks on Neural Networks", EuroS&P 2021) for hardware that skips zeros. Energy comes from `energy.py` (RAPL or
NVML) where the machine exposes it. Every figure is compared with natural inputs as a ratio with a bootstrap
interval (`bastion.evaluation.metrics.bootstrap_ratio`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.core.errors import ParameterError
from bastion.core.target import Target
from bastion.evaluation.metrics import bootstrap_ratio

ACTIVATIONS = ("ReLU", "ReLU6", "LeakyReLU", "GELU", "SiLU", "ELU", "Hardswish", "Mish", "Softplus")
ZERO = 1e-6  # |activation| at or below this counts as zero (density)


@contextmanager
def fixed_threads(threads: int | None) -> Iterator[None]:
    """Run with `threads` torch intra-op threads (None: leave as is), restoring the previous setting."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latencies(target: Target, x: torch.Tensor, repeats: int = 5, warmup: int = 3,
              threads: int | None = 1) -> np.ndarray:
    """Seconds per input (batch of one): the median over `repeats` timings after `warmup` calls, shape (n,)."""
    if repeats < 1 or warmup < 0:
        raise ParameterError("repeats must be >= 1 and warmup >= 0")
    out = np.empty(len(x))
    with fixed_threads(threads), torch.no_grad():
        for _ in range(warmup):
            target.labels(x[:1])
        for i in range(len(x)):
            one = x[i:i + 1]
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                target.labels(one)
                _sync(target.device)
                times.append(time.perf_counter() - start)
            out[i] = float(np.median(times))
    return out


def throughput(target: Target, x: torch.Tensor, batch_size: int = 64, min_seconds: float = 0.2,
               threads: int | None = 1) -> float:
    """Inputs per second over batches of `batch_size`, passing over `x` until `min_seconds` have elapsed."""
    done, start = 0, time.perf_counter()
    with fixed_threads(threads), torch.no_grad():
        target.labels(x[:batch_size])  # warm-up
        start = time.perf_counter()
        while True:
            for chunk in x.split(batch_size):
                target.labels(chunk)
                done += len(chunk)
            _sync(target.device)
            if time.perf_counter() - start >= min_seconds:
                break
    return done / (time.perf_counter() - start)


def percentiles(values: np.ndarray, scale: float = 1e3) -> dict[str, float]:
    """p50/p95/p99 and mean of `values` times `scale` (seconds to milliseconds by default)."""
    v = np.asarray(values, dtype=np.float64) * scale
    return {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
            "p99": float(np.percentile(v, 99)), "mean": float(v.mean())}


class ActivationProbe:
    """Reads the activation layers of a white-box model: their inputs (pre-activations) and outputs.

    Eager modules: forward hooks, one forward pass. TorchScript and torch.export programs: the hook-free readers of
    `bastion.models.intermediate` (two passes per layer). Both keep the autograd graph, so sponge attacks
    can ascend a function of the activations."""

    def __init__(self, model: nn.Module):
        from bastion.models import intermediate

        self.model = model
        inner = intermediate.unwrap(model)
        self.names = [name for name, kind in intermediate.layers(inner) if kind in ACTIVATIONS]
        if not self.names:
            raise ParameterError("the model has no activation layers (ReLU, GELU, ...) that Bastion can read; "
                                 "activation density needs them as modules, not functional calls")
        self._eager = not (isinstance(inner, torch.jit.ScriptModule) or intermediate.is_exported(inner))
        self._inner = inner
        self.skipped: list[str] = []  # layers whose values the graph readers cannot isolate
        if not self._eager:
            self._readers = []
            for name in list(self.names):
                try:
                    self._readers.append((intermediate.reader(model, name, read_input=True),
                                          intermediate.reader(model, name)))
                except ParameterError:
                    self.skipped.append(name)
            self.names = [n for n in self.names if n not in self.skipped]
            if not self.names:
                raise ParameterError("none of the model's activation layers can be read from its graph")

    def __call__(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(pre-activation, activation) of each activation layer for the batch `x`."""
        if not self._eager:
            return [(pre(x), post(x)) for pre, post in self._readers]
        captured: list[tuple[torch.Tensor, torch.Tensor]] = []
        modules = dict(self._inner.named_modules())
        hooks = [modules[n].register_forward_hook(lambda _m, i, o: captured.append((i[0], o))) for n in self.names]
        try:
            self._inner(x)
        finally:
            for hook in hooks:
                hook.remove()
        return captured

    def _outputs(self, x: torch.Tensor, every_exit: bool = False) -> dict[str, torch.Tensor]:
        """Each activation layer's output for the batch `x`, by layer name (a layer that did not run is absent);
        `every_exit`: through `exit_logits` (an early-exit model's full depth) instead of `forward`."""
        if not self._eager:
            return {name: post(x) for name, (_pre, post) in zip(self.names, self._readers, strict=True)}
        captured: dict[str, torch.Tensor] = {}
        modules = dict(self._inner.named_modules())
        hooks = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: captured.__setitem__(n, o))
                 for n in self.names]
        try:
            self._inner.exit_logits(x) if every_exit else self._inner(x)
        finally:
            for hook in hooks:
                hook.remove()
        return captured

    def density(self, x: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, dict[str, float]]:
        """Per-input density (non-zero activations / all activations, over every activation layer), shape (n,),
        and the mean density of each layer. A model that runs a layer on part of a batch only (early exits) is
        measured one input at a time, and a layer it skips counts as computing nothing (zero)."""
        nonzero, sizes = torch.zeros(len(x)), {}
        per_layer = dict.fromkeys(self.names, 0.0)
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                chunk = x[start:start + batch_size]
                outs = self._outputs(chunk)
                if any(len(o) != len(chunk) for o in outs.values()) or len(outs) < len(self.names):
                    pieces = [(start + i, self._outputs(chunk[i:i + 1])) for i in range(len(chunk))]
                else:
                    pieces = [(start, outs)]
                for at, found in pieces:
                    for name, post in found.items():
                        active = (post.abs() > ZERO).flatten(1).float()
                        nonzero[at:at + len(active)] += active.sum(1).cpu()
                        per_layer[name] += float(active.mean(1).sum())
                        sizes[name] = active.shape[1]
            if len(sizes) < len(self.names) and hasattr(self._inner, "exit_logits"):  # layers no input reached
                sizes.update({n: o[0].numel() for n, o in self._outputs(x[:1], every_exit=True).items()})
        total = sum(sizes.values())
        return (nonzero / max(total, 1)).numpy(), {n: v / len(x) for n, v in per_layer.items()}


def white_box_model(target: Target, what: str) -> nn.Module:
    """The PyTorch module of a gradient-access target, or a clear error."""
    from bastion.core.target import Access

    target.require(Access.GRADIENTS, what)
    model = getattr(target, "model", None)
    if not isinstance(model, nn.Module):
        raise ParameterError(f"{what} needs a PyTorch model")
    return model


def ratio(attack: np.ndarray, natural: np.ndarray, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The amplification mean(attack) / mean(natural) with its 95% bootstrap interval, as JSON."""
    interval = bootstrap_ratio(attack, natural, n_bootstrap=n_bootstrap, seed=seed)
    return {"estimate": interval.estimate, "ci": [interval.low, interval.high]}


def compare(name: str, attack: np.ndarray, natural: np.ndarray, seed: int = 0,
            summary: Callable[[np.ndarray], dict[str, float]] | None = None) -> dict[str, Any]:
    """One measured dimension: natural and attack summaries and the ratio of means (attack over natural)."""
    summary = summary or (lambda v: {"mean": float(np.mean(v))})
    return {"metric": name, "natural": summary(natural), "attack": summary(attack),
            "ratio": ratio(attack, natural, seed=seed)}


def percentiles_ms(values: np.ndarray) -> dict[str, float]:
    """p50/p95/p99 and mean of values already in milliseconds."""
    return percentiles(values, scale=1.0)
