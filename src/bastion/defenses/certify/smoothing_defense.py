"""`bastion defend smooth`: randomized smoothing as a defense, with optional certification.

Optionally fine-tunes the base classifier under Gaussian noise first (Cohen et al. train with the noise they
certify with), then reports the smoothed classifier's accuracy and abstention (PREDICT), or with `certify` its
certified accuracy per L2 radius (CERTIFY). At the L2 radii `eval_eps` the original model is attacked (`auto`)
and the smoothed one is judged by its certificate (a lower bound on its robust accuracy) or, without one or with
`attack_smoothed`, by the adaptive attack through the exported model (BPDA through the votes, EOT through the
noise: an upper bound, for the Monte Carlo model of `samples` draws per call).
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
from bastion.core.results import Result
from bastion.core.target import Access, Target, TorchTarget
from bastion.core.training import Trainer
from bastion.defenses.base import Defense, require_data
from bastion.defenses.before_after import evaluate
from bastion.defenses.certify.smoothing import ABSTAIN, Certificate, SmoothedClassifier, SmoothedModel
from bastion.defenses.preprocess.transforms import exportable
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
    `--train-data` first. `eval_eps` (L2, none to skip) are the radii of the before/after comparison (see the
    module docstring); the exported `artifact_` votes over `samples` draws per call.

    Example:
        >>> from bastion.defenses.certify.smoothing_defense import RandomizedSmoothing
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> train_data = load_dataset("train.npz")
        >>> result = RandomizedSmoothing(sigma=0.25).run(target, data, train_data=train_data)
        >>> result.findings
    """

    name = "smooth"
    family = "certify"
    requires = Access.LABELS

    def __init__(self, sigma: float = 0.25, *, n0: int = 100, n: int = 1000, alpha: float = 0.001,
                 certify: bool = False, radii: float | str | Sequence[float] | None = None, batch_size: int = 4096,
                 train_epochs: int = 0, lr: float = 1e-3, samples: int = 32,
                 eval_eps: float | str | Sequence[float] | None = 0.5, attack: str = "auto",
                 attack_smoothed: bool = False, eot_samples: int = 4, seed: int = 0):
        if sigma <= 0 or int(n0) < 1 or int(n) < 1 or not 0 < alpha < 1:
            raise ParameterError("smoothing needs sigma > 0, n0 >= 1, n >= 1 and alpha in (0, 1)")
        if int(train_epochs) < 0 or lr <= 0 or int(samples) < 1 or int(eot_samples) < 1 or int(batch_size) < 1:
            raise ParameterError("train_epochs must be >= 0, lr > 0, samples, eot_samples and batch_size >= 1")
        self.sigma, self.n0, self.n, self.alpha = float(sigma), int(n0), int(n), float(alpha)
        self.certify, self.batch_size = bool(certify), int(batch_size)
        self.radii = list(DEFAULT_RADII) if radii is None else _radii(radii)
        self.train_epochs, self.lr, self.samples = int(train_epochs), float(lr), int(samples)
        self.eval_eps = None if eval_eps is None else parse_eps(eval_eps)
        self.attack, self.attack_smoothed = str(attack), bool(attack_smoothed)
        self.eot_samples, self.seed = int(eot_samples), int(seed)

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
            **_: Any) -> Result:
        data = require_data(data, "randomized smoothing")
        start, queries = time.perf_counter(), target.queries
        base = self.base_target(target, train_data)
        smoothed = SmoothedClassifier(base, self.sigma, self.batch_size, self.seed)
        y = np.asarray(data.y)
        clean = float((target.labels(data.x).cpu().numpy() == y).mean())
        metrics: dict[str, Any] = {"sigma": self.sigma, "clean_accuracy_before": clean,
                                   "base_clean_accuracy": float((base.labels(data.x).cpu().numpy() == y).mean())}
        cert = None
        if self.certify:
            cert = smoothed.certify(torch.as_tensor(data.x), self.n0, self.n, self.alpha)
            correct = cert.prediction == y
            metrics.update({
                "certified_accuracy": cert.certified_accuracy(y, self.radii),
                "clean_accuracy_after": float(correct.mean()),
                "abstain_rate": float((cert.prediction == ABSTAIN).mean()),
                "mean_certified_radius": float(cert.radius[correct].mean()) if correct.any() else 0.0,
            })
        else:
            prediction = smoothed.predict(torch.as_tensor(data.x), self.n, self.alpha)
            metrics.update({"clean_accuracy_after": float((prediction == y).mean()),
                            "abstain_rate": float((prediction == ABSTAIN).mean())})
        metrics["clean_accuracy_cost"] = clean - metrics["clean_accuracy_after"]
        model = None
        if isinstance(base, TorchTarget):
            model = SmoothedModel(base.model, self.sigma, base.n_classes, self.samples).to(base.device).eval()
            self.artifact_ = exportable(model, base.model, base.input_shape)
        if self.eval_eps is not None:
            metrics.update(self.robustness(target, base, model, data, cert))
        return self.result(target, metrics, start, queries)

    def robustness(self, target: Target, base: Target, model: nn.Module | None, data: Dataset,
                   cert: Certificate | None) -> dict[str, Any]:
        """Robust accuracy at the L2 radii `eval_eps`: the original model under `attack`; the smoothed one by its
        certificate (a lower bound) and/or by the adaptive attack (an upper bound; always without a certificate)."""
        before = evaluate(target, data, self.eval_eps, "l2", self.attack, self.eot_samples, self.seed, naive=False)
        out: dict[str, Any] = {"robust_accuracy_before": before["robust_accuracy"]}
        after = None
        if cert is not None:
            rows = cert.certified_accuracy(np.asarray(data.y), self.eval_eps)
            after = [{"eps": r["radius"], "robust_accuracy": r["certified_accuracy"]} for r in rows]
            out["robust_accuracy_after_certified"] = after
        if (cert is None or self.attack_smoothed) and model is not None:
            view = TorchTarget(model, base.input_shape, base.n_classes, base.bounds, base.device, Access.GRADIENTS,
                               None, max(1, base.batch_size // self.samples), f"{base.name} + smoothing")
            attacked = evaluate(view, data, self.eval_eps, "l2", self.attack, self.eot_samples, self.seed,
                                naive=False)
            out["robust_accuracy_after_attack"] = attacked["robust_accuracy"]
            after = after or attacked["robust_accuracy"]
        if after is None:
            raise ParameterError("the smoothed model of a black box can only be evaluated by its certificate: "
                                 "pass --certify")
        out["robust_accuracy_after"] = after
        out["robust_accuracy_gain"] = [{"eps": a["eps"], "gain": a["robust_accuracy"] - b["robust_accuracy"]}
                                       for a, b in zip(after, before["robust_accuracy"], strict=True)]
        out["evaluation"] = {"attack": before["attack"], "norm": "l2", "n_samples": len(data),
                             "after": "certificate" if cert is not None else "bpda+eot attack",
                             "queries": before["queries"]}
        return out


def _radii(value: float | str | Sequence[float]) -> list[float]:
    if isinstance(value, str):
        value = [float(v) for v in value.split(",") if v.strip()]
    elif isinstance(value, (int, float)):
        value = [float(value)]
    radii = sorted({float(r) for r in value})
    if not radii or radii[0] < 0:
        raise ParameterError(f"radii must be non-negative, got {value}")
    return radii
