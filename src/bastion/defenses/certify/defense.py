"""`bastion defend smooth`: randomized smoothing as a defense, with optional certification.

Optionally fine-tunes the base classifier under Gaussian noise first (Cohen et al. train with the noise they
certify with), then reports the smoothed classifier's accuracy and abstention (PREDICT), or with `certify` its
certified accuracy per L2 radius (CERTIFY), and the before/after comparison of `defenses.compare` at the L2
radii `eval_eps`: the adaptive attack (BPDA through the votes, EOT through the noise) gives an upper bound on the
smoothed model's robust accuracy, the certificate a lower bound (for the exact smoothed classifier, which the
exported model approximates with `samples` draws per call).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.attacks.evasion.base import parse_eps
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.results import AttackResult, Finding
from bastion.core.target import Access, Target, TorchTarget
from bastion.core.training import Trainer
from bastion.defenses.base import Defense, require_data
from bastion.defenses.certify.smoothing import ABSTAIN, SmoothedClassifier, SmoothedModel
from bastion.defenses.compare import compare
from bastion.defenses.training.base import trainable_copy

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def noise_training(model: nn.Module, data: Dataset, sigma: float, trainer: Trainer, seed: int) -> nn.Module:
    """Fine-tune `model` on Gaussian-noise-augmented inputs x + N(0, σ²I) through the shared Trainer."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)

    def add_noise(_: nn.Module, xb: torch.Tensor, yb: torch.Tensor, epoch: int):
        return xb + sigma * torch.randn(xb.shape, generator=gen, device=xb.device), yb

    trainer.batch_hook = add_noise
    return trainer.fit(model, data.x, data.y)


@register("defenses", "smooth", family="certify")
class RandomizedSmoothing(Defense):
    """Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019): PREDICT, or CERTIFY with `certify`.

    `sigma` is the noise level, `n0` and `n` the selection and estimation draws, `alpha` the error rate; `radii`
    the L2 radii of the certified-accuracy curve. `train_epochs` > 0 fine-tunes the base classifier under noise on
    `--train-data` first. `eval_eps` (L2, none to skip) are the radii of the adaptive before/after attack, run on
    a smoothed model of `samples` draws per call (also the exported `artifact`)."""

    name = "smooth"
    family = "certify"
    requires = Access.LABELS

    def __init__(self, sigma: float = 0.25, n0: int = 100, n: int = 1000, alpha: float = 0.001,
                 certify: bool = False, radii: float | str | Sequence[float] | None = None, batch_size: int = 4096,
                 train_epochs: int = 0, lr: float = 1e-3, samples: int = 32,
                 eval_eps: float | str | Sequence[float] | None = 0.5, attack: str = "auto", eot_samples: int = 4,
                 seed: int = 0):
        if sigma <= 0 or int(n0) < 1 or int(n) < 1 or not 0 < alpha < 1:
            raise ParameterError("smoothing needs sigma > 0, n0 >= 1, n >= 1 and alpha in (0, 1)")
        if int(train_epochs) < 0 or lr <= 0 or int(samples) < 1 or int(eot_samples) < 1 or int(batch_size) < 1:
            raise ParameterError("train_epochs must be >= 0, lr > 0, samples, eot_samples and batch_size >= 1")
        self.sigma, self.n0, self.n, self.alpha = float(sigma), int(n0), int(n), float(alpha)
        self.certify, self.batch_size = bool(certify), int(batch_size)
        self.radii = list(DEFAULT_RADII) if radii is None else _radii(radii)
        self.train_epochs, self.lr, self.samples = int(train_epochs), float(lr), int(samples)
        self.eval_eps = None if eval_eps is None else parse_eps(eval_eps)
        self.attack, self.eot_samples, self.seed = str(attack), int(eot_samples), int(seed)

    def base_target(self, target: Target, train_data: Dataset | None) -> Target:
        """The base classifier: the target itself, or a copy fine-tuned under noise."""
        if self.train_epochs == 0:
            return target
        if not isinstance(target, TorchTarget):
            raise ParameterError("noise training (--train-epochs) needs a PyTorch model")
        train = require_data(train_data, "noise training (--train-epochs)", "--train-data")
        trainer = Trainer(epochs=self.train_epochs, lr=self.lr, seed=self.seed, device=str(target.device),
                          description="noise training")
        model = noise_training(trainable_copy(target.model).to(target.device), train, self.sigma, trainer,
                               self.seed)
        return TorchTarget(model, target.input_shape, target.n_classes, target.bounds, target.device, target.access,
                           None, target.batch_size, f"{target.name} + noise training")

    def run(self, target: Target, data: Dataset | None = None, train_data: Dataset | None = None,
            **_: Any) -> AttackResult:
        data = require_data(data, "randomized smoothing")
        start, queries = time.perf_counter(), target.queries
        base = self.base_target(target, train_data)
        smoothed = SmoothedClassifier(base, self.sigma, self.batch_size, self.seed)
        y = np.asarray(data.y)
        with torch.no_grad():
            base_accuracy = float((base.labels(data.x).cpu().numpy() == y).mean())
        metrics: dict[str, Any] = {"sigma": self.sigma, "base_clean_accuracy": base_accuracy}
        if self.certify:
            cert = smoothed.certify(torch.as_tensor(data.x), self.n0, self.n, self.alpha)
            curve = cert.certified_accuracy(y, self.radii)
            correct = cert.prediction == y
            metrics.update({
                "certified_accuracy": curve,
                "smoothed_accuracy": float(correct.mean()),
                "abstain_rate": float((cert.prediction == ABSTAIN).mean()),
                "mean_certified_radius": float(cert.radius[correct].mean()) if correct.any() else 0.0,
            })
        else:
            prediction = smoothed.predict(torch.as_tensor(data.x), self.n, self.alpha)
            metrics.update({"smoothed_accuracy": float((prediction == y).mean()),
                            "abstain_rate": float((prediction == ABSTAIN).mean())})
        metrics["clean_accuracy_cost"] = float((target.labels(data.x).cpu().numpy() == y).mean()) \
            - metrics["smoothed_accuracy"]
        findings = [self.headline(metrics)]
        if isinstance(base, TorchTarget):
            model = SmoothedModel(base.model, self.sigma, base.n_classes, self.samples).to(base.device).eval()
            self.artifact = model
            if self.eval_eps is not None:
                after = TorchTarget(model, base.input_shape, base.n_classes, base.bounds, base.device,
                                    Access.GRADIENTS, None, max(1, base.batch_size // self.samples),
                                    f"{base.name} + smoothing")
                comparison, more = compare(target, after, data, self.eval_eps, "l2", self.attack, self.eot_samples,
                                           self.seed, what=f"smoothing (sigma={self.sigma:g})",
                                           naive=False)
                comparison.pop("clean_accuracy_cost")
                metrics.update(comparison)
                findings += more
        return self.result(target, metrics, start, queries, findings)

    def headline(self, metrics: dict[str, Any]) -> Finding:
        if "certified_accuracy" in metrics:
            best = max(metrics["certified_accuracy"], key=lambda r: r["radius"] * (r["certified_accuracy"] > 0))
            title = (f"smoothing (sigma={self.sigma:g}): certified accuracy "
                     + ", ".join(f"{r['certified_accuracy']:.1%} at r={r['radius']:g}"
                                 for r in metrics["certified_accuracy"]))
            return Finding(title=title, family="evasion", severity="info", metric="certified_accuracy",
                           value=best["certified_accuracy"], evidence={"curve": metrics["certified_accuracy"],
                                                                       "alpha": self.alpha, "n": self.n})
        return Finding(title=f"smoothing (sigma={self.sigma:g}): accuracy {metrics['smoothed_accuracy']:.1%}, "
                             f"abstains on {metrics['abstain_rate']:.1%}",
                       family="evasion", severity="info", metric="smoothed_accuracy",
                       value=metrics["smoothed_accuracy"])


def _radii(value: float | str | Sequence[float]) -> list[float]:
    if isinstance(value, str):
        value = [float(v) for v in value.split(",") if v.strip()]
    elif isinstance(value, (int, float)):
        value = [float(value)]
    radii = sorted({float(r) for r in value})
    if not radii or radii[0] < 0:
        raise ParameterError(f"radii must be non-negative, got {value}")
    return radii
