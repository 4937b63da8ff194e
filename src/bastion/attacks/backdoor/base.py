"""Shared machinery of training-time poisoning attacks.

A poisoning attack tampers with a training set, trains a fresh model on it through the shared `Trainer`, and
measures the model on the clean test set: clean accuracy (CA) and attack success rate (ASR), for each poison rate
of a sweep. A clean model (rate 0) is always trained too, so the cost in clean accuracy is measured, not assumed.

Subclasses implement `poison(x, y, rate, gen)` (returning the tampered set and the poisoned indices) and
`triggered(x, y)` (the test inputs the attacker would send, with the label the attacker wants).
"""

from __future__ import annotations

import copy
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from bastion.attacks.base import Attack
from bastion.core.data import Dataset, save_npz, validate_for_model
from bastion.core.errors import BudgetSpent, ParameterError
from bastion.core.results import Result
from bastion.core.target import Access, Target, TorchTarget
from bastion.core.training import Trainer, accuracy, predict, seed_everything
from bastion.evaluation.metrics import attack_success_rate
from bastion.models.factory import build


@dataclass
class Poisoned:
    """A tampered training set: inputs, labels, and a boolean mask of the tampered samples."""

    x: torch.Tensor
    y: torch.Tensor
    is_poison: torch.Tensor

    @property
    def n_poison(self) -> int:
        return int(self.is_poison.sum())

    def to_dataset(self, name: str = "poisoned") -> Dataset:
        return Dataset(self.x.cpu().numpy(), self.y.cpu().numpy(), name)


def parse_rates(rate: float | str | Sequence[float]) -> list[float]:
    """Accept 0.05, "0.01,0.05" or [0.01, 0.05]; return sorted unique rates in (0, 1)."""
    if isinstance(rate, str):
        rate = [float(r) for r in rate.split(",") if r.strip()]
    elif isinstance(rate, (int, float)):
        rate = [float(rate)]
    values = sorted({float(r) for r in rate})
    if not values or any(not 0.0 < r < 1.0 for r in values):
        raise ParameterError(f"poison_rate must lie in (0, 1), got {rate}")
    return values


def reset_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` with freshly initialised, trainable parameters (same architecture, new weights; a
    model handed over frozen, `requires_grad=False`, is trained all the same)."""
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return fresh.requires_grad_(True)


def choose(candidates: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """`n` indices drawn without replacement from the boolean mask `candidates` (all of them if fewer)."""
    pool = candidates.nonzero().flatten()
    order = torch.randperm(len(pool), generator=gen).to(pool.device)
    return pool[order[: min(n, len(pool))]]


class PoisoningAttack(Attack):
    """Base class: poison the training set, train through `Trainer`, report CA and ASR per poison rate."""

    family: ClassVar[str] = "backdoor"
    requires: ClassVar[Access] = Access.LABELS
    dataset_params: ClassVar[tuple[str, ...]] = ("train_data",)

    def __init__(self, arch: str | Callable[[], nn.Module] | None = None,
                 *, poison_rate: float | str | Sequence[float] = 0.05, target_label: int = 0, epochs: int = 20,
                 batch_size: int = 64, lr: float = 1e-3, seed: int = 0, save_dir: str | None = None):
        if epochs < 1 or batch_size < 1 or lr <= 0:
            raise ParameterError("epochs and batch_size must be at least 1 and lr positive")
        if int(target_label) < 0:
            raise ParameterError(f"target_label must be a class index, got {target_label}")
        self.arch, self.poison_rate, self.target_label = arch, parse_rates(poison_rate), int(target_label)
        self.epochs, self.batch_size, self.lr = int(epochs), int(batch_size), float(lr)
        self.seed, self.save_dir = int(seed), save_dir
        self.artifact_: nn.Module | None = None
        self.poisoned_: Poisoned | None = None


    # -- what subclasses implement ------------------------------------------------------------------------------
    @abstractmethod
    def poison(self, x: torch.Tensor, y: torch.Tensor, rate: float, gen: torch.Generator) -> Poisoned:
        ...

    @abstractmethod
    def triggered(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Test inputs carrying the trigger and the label the attacker wants (None: no trigger, untargeted)."""
        ...

    def prepare(self, factory: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor) -> None:
        """Work done once before poisoning (e.g. a surrogate model for clean-label poisons)."""

    # -- shared loop --------------------------------------------------------------------------------------------
    def trainer(self, device: torch.device, seed_offset: int = 0) -> Trainer:
        return Trainer(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed + seed_offset,
                       device=str(device), description=f"{self.name} training")

    def train(self, factory: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor,
              seed_offset: int = 0) -> nn.Module:
        """A fresh model (initialised from the seed) trained on (x, y)."""
        seed_everything(self.seed + seed_offset)
        return self.trainer(x.device, seed_offset).fit(factory().to(x.device), x, y)

    def factory(self, target: Target) -> Callable[[], nn.Module]:
        """The victim architecture: `arch` when given, else the target's own module with fresh weights."""
        if self.arch is not None:
            build(self.arch)  # fail early on a bad factory
            return lambda: build(self.arch)
        if isinstance(target, TorchTarget):
            return lambda: reset_copy(target.model)
        raise ParameterError(f"{self.name} retrains the victim: pass --arch module:factory for a non-PyTorch model")

    def run(self, target: Target, data: Dataset, train_data: Dataset | None = None, **_: Any) -> Result:
        if train_data is None:
            raise ParameterError(f"{self.name} needs the training set to poison: pass --train-data FILE")
        for d in (data, train_data):
            validate_for_model(d, target.n_classes, target.input_shape, target.bounds)
        if self.target_label >= target.n_classes:
            raise ParameterError(f"target_label {self.target_label} is not a class of a {target.n_classes}-class model")
        self.bounds_, self.n_classes_ = target.bounds, target.n_classes
        start, device = time.perf_counter(), target.device
        factory = self.factory(target)
        x = torch.as_tensor(train_data.x, dtype=torch.float32, device=device)
        y = torch.as_tensor(train_data.y, dtype=torch.long, device=device)
        xt = torch.as_tensor(data.x, dtype=torch.float32, device=device)
        yt = torch.as_tensor(data.y, dtype=torch.long, device=device)
        self.prepare(factory, x, y)
        attack_inputs = self.triggered(xt, yt)
        curve, stopped = [], ""
        for rate in [0.0, *self.poison_rate]:
            if len(curve) >= 2:  # a deadline or spent budget stops the sweep between rates; what it measured stays
                try:
                    target.counter.charge(0)
                except BudgetSpent as exc:
                    stopped = f"{exc}: {len(curve) - 1} of {len(self.poison_rate)} poison rates trained"
                    break
            gen = torch.Generator().manual_seed(self.seed)
            poisoned = self.poison(x, y, rate, gen) if rate > 0 else Poisoned(x, y, torch.zeros_like(y, dtype=bool))
            model = self.train(factory, poisoned.x, poisoned.y)
            point = {"poison_rate": rate, "n_poisoned": poisoned.n_poison, "clean_accuracy": accuracy(model, xt, yt)}
            if attack_inputs is not None:
                point["attack_success_rate"] = attack_success_rate(
                    predict(model, attack_inputs[0]).cpu().numpy(), attack_inputs[1].cpu().numpy())
            curve.append(point)
            self.artifact_, self.poisoned_ = model, poisoned
        metrics = self.summarize(curve, len(train_data), attack_inputs)
        if self.save_dir:
            metrics["saved"] = self.save(Path(self.save_dir), attack_inputs)
        return Result(family=self.family, attack=self.name, params=self.get_params(), metrics=metrics,
                            queries=0, seconds=time.perf_counter() - start, device=str(device),
                            status="partial" if stopped else "complete", reason=stopped)

    def summarize(self, curve: list[dict], n_train: int, attack_inputs: Any) -> dict[str, Any]:
        clean, poisoned = curve[0], curve[1:]
        metrics: dict[str, Any] = {
            "clean_accuracy_baseline": clean["clean_accuracy"],
            "poison_rates": [p["poison_rate"] for p in poisoned],
            "curve": poisoned,
            "clean_accuracy_drop": [clean["clean_accuracy"] - p["clean_accuracy"] for p in poisoned],
            "n_train": n_train,
            "target_label": self.target_label,
        }
        if attack_inputs is not None:
            metrics["attack_success_rate_baseline"] = clean["attack_success_rate"]
            metrics["n_triggered"] = len(attack_inputs[0])
        return metrics

    def save(self, folder: Path, attack_inputs: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, str]:
        """Write the model of the largest rate (safetensors for an `arch` string, else TorchScript), its poisoned
        training set (with an `is_poison` array) and the triggered test inputs (labels = the attacker's target)."""
        from bastion.models.export import save_model
        from bastion.models.metadata import ModelMetadata

        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".safetensors" if isinstance(self.arch, str) else ".pt"
        paths = {"model": folder / f"poisoned_model{suffix}", "train_data": folder / "poisoned_train.npz"}
        meta = ModelMetadata(n_classes=self.n_classes_, input_shape=list(self.poisoned_.x.shape[1:]),
                             bounds=list(self.bounds_), name=f"{self.name} poisoned model")
        save_model(copy.deepcopy(self.artifact_), paths["model"], meta)
        np.savez_compressed(paths["train_data"], x=self.poisoned_.x.cpu().numpy(), y=self.poisoned_.y.cpu().numpy(),
                            is_poison=self.poisoned_.is_poison.cpu().numpy())
        if attack_inputs is not None:
            paths["triggered"] = folder / "triggered_test.npz"
            save_npz(Dataset(attack_inputs[0].cpu().numpy(), attack_inputs[1].cpu().numpy(), "triggered"),
                     paths["triggered"])
        return {k: str(v) for k, v in paths.items()}
