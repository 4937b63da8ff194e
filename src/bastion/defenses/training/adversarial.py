"""Adversarial training through the shared `Trainer`: PGD-AT, TRADES and fast FGSM training with random start.

Each method plugs into `Trainer` as a `batch_hook` (the batch it trains on) and, for TRADES, a `loss_fn`. Training
runs one epoch at a time; with `early_stop`, after each epoch the robust accuracy of a fixed monitor batch of
training data under a 10-step PGD is measured, the best weights are kept, and training stops when it falls by more
than `overfit_drop` below the best: the catastrophic overfitting of single-step training (Wong, Rice & Kolter,
ICLR 2020), and the robust overfitting of multi-step training (Rice, Wong & Kolter, ICML 2020).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.evasion.norms import ascent_step, lp_norm, project
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import TorchTarget
from bastion.defenses.training.base import TrainingDefense

Objective = Callable[[torch.Tensor], torch.Tensor]


def _view(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    return v.view(-1, *[1] * (like.dim() - 1)) if isinstance(v, torch.Tensor) else v


def uniform_start(x: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """A random point of the eps ball, drawn on x's device: uniform per coordinate (L∞) or in the L2 ball."""
    if norm == "linf":
        return (2 * torch.rand(x.shape, generator=gen, device=x.device) - 1) * eps
    noise = torch.randn(x.shape, generator=gen, device=x.device)
    radius = torch.rand(len(x), generator=gen, device=x.device) * eps
    return noise * _view(radius / lp_norm(noise, "l2").clamp_min(1e-12), x)


def ascend(model: nn.Module, x: torch.Tensor, start: torch.Tensor, objective: Objective, eps: float, norm: str,
           steps: int, step_size: float, bounds: tuple[float, float]) -> torch.Tensor:
    """`steps` projected steepest-ascent steps on `objective(model(x'))` (a summed loss) from x + start; the last
    iterate, inside the eps ball and the bounds."""
    lo, hi = bounds
    eps_t = torch.full((len(x),), float(eps), device=x.device)
    step_t = torch.full((len(x),), float(step_size), device=x.device)
    adv = (x + project(start, eps_t, norm)).clamp(lo, hi).detach()
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(objective(model(adv)), adv)
        adv = adv.detach() + ascent_step(grad, step_t, norm)
        adv = (x + project(adv - x, eps_t, norm)).clamp(lo, hi).detach()
    return adv


def ce_objective(y: torch.Tensor) -> Objective:
    return lambda logits: F.cross_entropy(logits, y, reduction="sum")


def kl_objective(clean_logits: torch.Tensor) -> Objective:
    """TRADES' inner objective: KL(f(x) ‖ f(x')) summed over the batch, f(x) fixed."""
    p_clean = clean_logits.softmax(-1).detach()
    return lambda logits: F.kl_div(logits.log_softmax(-1), p_clean, reduction="sum")


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(-1) == y).float().mean())


class AdversarialTraining(TrainingDefense):
    """Base of the three methods: subclasses set `steps`, `step_size`, `start` and may override the hook/loss."""

    start = "uniform"

    def _adversarial(self, eps: float, norm: str, steps: int, step_size: float | None, early_stop: bool,
                     overfit_drop: float, monitor: int) -> None:
        if not eps or float(eps) <= 0:
            raise ParameterError("adversarial training needs a positive eps")
        if norm not in ("linf", "l2"):
            raise ParameterError(f"{self.name} trains against linf or l2 perturbations, not {norm}")
        if int(steps) < 1 or (step_size is not None and step_size <= 0):
            raise ParameterError("steps must be at least 1 and step_size positive")
        if not 0 < overfit_drop <= 1 or int(monitor) < 1:
            raise ParameterError("overfit_drop must lie in (0, 1] and monitor be at least 1")
        self.eps = float(eps)
        self.steps, self.step_size = int(steps), step_size
        self.early_stop, self.overfit_drop, self.monitor = bool(early_stop), float(overfit_drop), int(monitor)

    @property
    def alpha(self) -> float:
        return float(self.step_size) if self.step_size is not None else 2.5 * self.eps / self.steps

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
                    bounds: tuple[float, float]) -> torch.Tensor:
        start = uniform_start(x, self.eps, self.norm, gen)
        return ascend(model, x, start, ce_objective(y), self.eps, self.norm, self.steps, self.alpha, bounds)

    def hook(self, gen: torch.Generator, bounds: tuple[float, float]):
        def batch_hook(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, epoch: int):
            model.eval()
            return self.adversarial(model, xb, yb, gen, bounds), yb
        return batch_hook

    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        return None

    def monitor_accuracy(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         bounds: tuple[float, float]) -> float:
        """Accuracy of the monitor batch under a 10-step PGD (random start) at the training eps."""
        model.eval()
        gen = torch.Generator(device=x.device).manual_seed(self.seed + 7919)
        start = uniform_start(x, self.eps, self.norm, gen)
        adv = ascend(model, x, start, ce_objective(y), self.eps, self.norm, 10, self.eps / 4, bounds)
        return _accuracy(model, adv, y)

    def train(self, model: nn.Module, data: Dataset, target: TorchTarget) -> tuple[nn.Module, dict[str, Any]]:
        device, bounds = target.device, target.bounds
        x = torch.as_tensor(data.x, dtype=torch.float32, device=device)
        y = torch.as_tensor(data.y, dtype=torch.long, device=device)
        gen = torch.Generator(device=device).manual_seed(self.seed)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))[: self.monitor]
        mx, my = x[order.to(device)], y[order.to(device)]
        kwargs: dict[str, Any] = {"epochs": 1, "batch_hook": self.hook(gen, bounds)}
        if self.loss_fn() is not None:
            kwargs["loss_fn"] = self.loss_fn()
        trainer = self.trainer(target, **kwargs)
        optimizer = trainer.make_optimizer(model)
        history: list[float] = []
        best, best_state, stopped = -1.0, None, None
        for epoch in range(self.epochs):
            trainer.seed = self.seed + epoch
            trainer.fit(model, x, y, optimizer)
            if not self.early_stop:
                continue
            robust = self.monitor_accuracy(model, mx, my, bounds)
            history.append(robust)
            if robust > best:
                best, best_state = robust, copy.deepcopy(model.state_dict())
            elif self.early_stop and robust < best - self.overfit_drop:
                stopped = epoch + 1
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        metrics = {"epochs_run": len(history) if self.early_stop else self.epochs,
                   "early_stopped_at_epoch": stopped,
                   "best_epoch": history.index(best) + 1 if history else None, "monitor_robust_accuracy": history,
                   "train_loss": trainer.history.loss, "train_accuracy": trainer.history.accuracy}
        return model.eval(), metrics


@register("defenses", "adv-train", family="training")
class PGDAdversarialTraining(AdversarialTraining):
    """PGD adversarial training (Madry, Makelov, Schmidt, Tsipras & Vladu, ICLR 2018).

    Every batch is replaced by its PGD adversarial version: uniform random start in the eps ball, `steps` steps of
    size `step_size` (default 2.5·eps/steps) on the cross-entropy, last iterate. `eps` is the training radius;
    `eval_eps` (default: eps) the radii of the before/after evaluation by `attack`.

    Example:
        >>> from bastion.defenses.training.adversarial import PGDAdversarialTraining
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> train_data = load_dataset("train.npz")
        >>> result = PGDAdversarialTraining(eps=0.0314).run(target, data, train_data=train_data)
        >>> result.findings
    """

    name = "adv-train"

    def __init__(self, eps: float = 8 / 255, *, norm: str = "linf", steps: int = 7, step_size: float | None = None,
                 epochs: int = 10, batch_size: int = 128, lr: float = 1e-3, optimizer: str = "adam",
                 from_scratch: bool = False, early_stop: bool = True, overfit_drop: float = 0.2, monitor: int = 512,
                 eval_eps: float | str | Sequence[float] | None = None, attack: str = "auto", seed: int = 0):
        self._training(epochs, batch_size, lr, optimizer, from_scratch, eps if eval_eps is None else eval_eps, norm,
                       attack, seed)
        self._adversarial(eps, norm, steps, step_size, early_stop, overfit_drop, monitor)


@register("defenses", "trades", family="training")
class TRADES(AdversarialTraining):
    """TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically Principled Trade-off between Robustness
    and Accuracy", ICML 2019).

    Loss CE(f(x), y) + β·KL(f(x) ‖ f(x')), where x' maximises KL(f(x) ‖ f(x')) in the eps ball: PGD from
    x + 0.001·N(0, I), `steps` steps of size `step_size` (default 2.5·eps/steps). β = `beta` trades clean accuracy
    for robustness (the paper's 1/λ; 6 on CIFAR-10). The clean and adversarial halves go through the model in one
    batch.

    Example:
        >>> from bastion.defenses.training.adversarial import TRADES
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> train_data = load_dataset("train.npz")
        >>> result = TRADES(eps=0.0314).run(target, data, train_data=train_data)
        >>> result.findings
    """

    name = "trades"

    def __init__(self, eps: float = 8 / 255, *, norm: str = "linf", beta: float = 6.0, steps: int = 7,
                 step_size: float | None = None, epochs: int = 10, batch_size: int = 128, lr: float = 1e-3,
                 optimizer: str = "adam", from_scratch: bool = False, early_stop: bool = True,
                 overfit_drop: float = 0.2, monitor: int = 512, eval_eps: float | str | Sequence[float] | None = None,
                 attack: str = "auto", seed: int = 0):
        if beta < 0:
            raise ParameterError("TRADES needs beta >= 0")
        self.beta = float(beta)
        self._training(epochs, batch_size, lr, optimizer, from_scratch, eps if eval_eps is None else eval_eps, norm,
                       attack, seed)
        self._adversarial(eps, norm, steps, step_size, early_stop, overfit_drop, monitor)

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
                    bounds: tuple[float, float]) -> torch.Tensor:
        with torch.no_grad():
            clean = model(x)
        start = 0.001 * torch.randn(x.shape, generator=gen, device=x.device)
        return ascend(model, x, start, kl_objective(clean), self.eps, self.norm, self.steps, self.alpha,
                      bounds)

    def hook(self, gen: torch.Generator, bounds: tuple[float, float]):
        def batch_hook(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, epoch: int):
            model.eval()
            adv = self.adversarial(model, xb, yb, gen, bounds)
            return torch.cat([xb, adv]), torch.cat([yb, yb])
        return batch_hook

    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        beta = self.beta

        def trades_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            n = len(y) // 2
            clean, adv = logits[:n], logits[n:]
            robust = F.kl_div(adv.log_softmax(-1), clean.softmax(-1), reduction="batchmean")
            return F.cross_entropy(clean, y[:n]) + beta * robust

        return trades_loss


@register("defenses", "fast-at", family="training")
class FastAdversarialTraining(AdversarialTraining):
    """Fast adversarial training: FGSM with random start (Wong, Rice & Kolter, "Fast is better than free", ICLR
    2020).

    One signed-gradient step of size `step_size` (default 1.25·eps, the paper's α) from a uniform random point
    of the eps ball, projected back; with early stopping when the monitor batch's PGD accuracy collapses, the
    paper's guard against catastrophic overfitting.

    Example:
        >>> from bastion.defenses.training.adversarial import FastAdversarialTraining
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> train_data = load_dataset("train.npz")
        >>> result = FastAdversarialTraining(eps=0.0314).run(target, data, train_data=train_data)
        >>> result.findings
    """

    name = "fast-at"

    def __init__(self, eps: float = 8 / 255, *, norm: str = "linf", step_size: float | None = None, epochs: int = 10,
                 batch_size: int = 128, lr: float = 1e-3, optimizer: str = "adam", from_scratch: bool = False,
                 early_stop: bool = True, overfit_drop: float = 0.2, monitor: int = 512,
                 eval_eps: float | str | Sequence[float] | None = None, attack: str = "auto", seed: int = 0):
        self._training(epochs, batch_size, lr, optimizer, from_scratch, eps if eval_eps is None else eval_eps, norm,
                       attack, seed)
        self._adversarial(eps, norm, 1, step_size, early_stop, overfit_drop, monitor)

    @property
    def alpha(self) -> float:
        return float(self.step_size) if self.step_size is not None else 1.25 * self.eps
