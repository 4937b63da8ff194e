"""Shared models of the evasion tests: a small MLP on scikit-learn's digits (1x8x8 in [0, 1]) trained once per
session, and models that mask their gradients in the ways THREATS.md §1 warns about."""

from __future__ import annotations

import functools

import torch
from torch import nn

from bastion.core.data import Dataset
from bastion.core.target import TorchTarget
from bastion.core.training import Trainer
from bastion.demo.datasets import digits


def digits_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


@functools.cache
def trained() -> tuple[nn.Module, Dataset, Dataset]:
    """(model, train, test): the undefended digits MLP, about 97% test accuracy."""
    train, test = digits(0)
    model = digits_mlp()
    Trainer(epochs=20, batch_size=64, lr=3e-3, seed=0, device="cpu").fit(model, train.x, train.y)
    return model.eval(), train, test


@functools.cache
def surrogate() -> nn.Module:
    """A second MLP trained with another seed: the substitute of transfer attacks."""
    train, _ = digits(0)
    torch.manual_seed(1)
    model = digits_mlp()
    Trainer(epochs=20, batch_size=64, lr=3e-3, seed=1, device="cpu").fit(model, train.x, train.y)
    return model.eval()


def eval_data(n: int = 60) -> Dataset:
    return trained()[2].head(n)


def target(model: nn.Module | None = None, **kwargs) -> TorchTarget:
    kwargs.setdefault("n_classes", 10)
    return TorchTarget(model if model is not None else trained()[0], (1, 8, 8), device="cpu", **kwargs)


class Quantize(nn.Module):
    """Input quantisation to `levels` grey levels: its gradient is zero almost everywhere."""

    def __init__(self, levels: int = 5):
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * (self.levels - 1)) / (self.levels - 1)


class Saturate(nn.Module):
    """A softmax at a huge temperature: outputs are one-hot probabilities whose gradient vanishes."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(z * 1000.0, dim=1)


class Noise(nn.Module):
    """Gaussian input noise that stays on in eval mode: a randomised model."""

    def __init__(self, sigma: float = 0.1):
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.sigma * torch.randn_like(x)).clamp(0, 1)


class _NoisyGradient(torch.autograd.Function):
    """Identity forward; a random vector as its gradient (a shattered gradient that is not zero)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(grad)


class Shatter(nn.Module):
    """A layer whose gradient is noise: passes checks 1-3, misleads every gradient attack."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NoisyGradient.apply(x)


def masked(kind: str) -> nn.Module:
    """The trained MLP behind a gradient-masking layer: quantize, saturate, noise or shatter."""
    base = trained()[0]
    if kind == "shatter":
        return nn.Sequential(Shatter(), base).eval()
    if kind == "quantize":
        return nn.Sequential(Quantize(), base).eval()
    if kind == "saturate":
        return nn.Sequential(base, Saturate()).eval()
    if kind == "noise":
        return nn.Sequential(Noise(), base).eval()
    raise ValueError(kind)
