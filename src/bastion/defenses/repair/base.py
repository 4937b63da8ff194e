"""Shared machinery of backdoor repair: copy the model, repair the copy on clean data, measure before and after.

The clean data the defender trusts is `train_data` when given (then CA is measured on `data`), else `data` minus
a held-out `holdout` fraction. Clean accuracy (CA) is measured on `test_data` when given, else as just said;
attack success (ASR) on `triggered` inputs whose labels are the attacker's target (as written by a poisoning
attack's `save_dir`). With both, the defense effectiveness rating DER = [max(0, ΔASR) − max(0, ΔCA) + 1] / 2.
"""

from __future__ import annotations

import copy
import time
from abc import abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from bastion.core.data import Dataset, validate_for_model
from bastion.core.errors import ParameterError
from bastion.core.target import Access, Target
from bastion.core.training import Trainer, accuracy, predict
from bastion.defenses.base import Defense, require_data, torch_module
from bastion.evaluation.metrics import attack_success_rate, defense_effectiveness_rating


class RepairDefense(Defense):
    """Base class: subclasses implement `repair(model, x, y) -> dict` that changes `model` in place."""

    family: ClassVar[str] = "repair"
    requires: ClassVar[Access] = Access.GRADIENTS
    dataset_params: ClassVar[tuple[str, ...]] = ("triggered", "test_data")

    def __init__(self, epochs: int = 20, *, lr: float = 1e-2, optimizer: str = "adam", batch_size: int = 64,
                 holdout: float = 0.3, seed: int = 0):
        if epochs < 0 or lr <= 0 or batch_size < 1 or not 0 < holdout < 1:
            raise ParameterError("epochs must be >= 0, lr positive, batch_size >= 1 and holdout in (0, 1)")
        if optimizer not in ("adam", "adamw", "sgd"):
            raise ParameterError(f"unknown optimizer {optimizer!r}: use adam, adamw or sgd")
        self.epochs, self.lr, self.optimizer, self.batch_size = int(epochs), float(lr), optimizer, int(batch_size)
        self.holdout, self.seed = float(holdout), int(seed)

    def trainer(self, device: torch.device) -> Trainer:
        return Trainer(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
                       seed=int(self.seed),
                       device=str(device), description=f"{self.name} fine-tuning")

    @abstractmethod
    def repair(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        ...

    def measure(self, model: nn.Module, test: tuple[torch.Tensor, torch.Tensor],
                triggered: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, float]:
        out = {"clean_accuracy": accuracy(model, *test)}
        if triggered is not None:
            out["attack_success_rate"] = attack_success_rate(predict(model, triggered[0]).cpu().numpy(),
                                                             triggered[1].cpu().numpy())
        return out

    def run(self, target: Target, data: Dataset | None = None, triggered: Dataset | None = None,
            test_data: Dataset | None = None, train_data: Dataset | None = None, **_: Dataset) -> Any:
        self.check_access(target)
        original = torch_module(target, self.name)
        if train_data is not None:
            data, test_data = train_data, test_data if test_data is not None else data
        data = require_data(data, self.name, "--data CLEAN_DATA")
        for d in (data, triggered, test_data):
            if d is not None:
                validate_for_model(d, target.n_classes, target.input_shape, target.bounds)
        start, dev = time.perf_counter(), target.device

        def tensors(d: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
            return (torch.as_tensor(d.x, dtype=torch.float32, device=dev),
                    torch.as_tensor(d.y, dtype=torch.long, device=dev))

        x, y = tensors(data)
        if test_data is None:
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(self.seed))).to(dev)
            n_test = max(1, int(round(self.holdout * len(x))))
            test, (x, y) = (x[order[:n_test]], y[order[:n_test]]), (x[order[n_test:]], y[order[n_test:]])
        else:
            test = tensors(test_data)
        trig = tensors(triggered) if triggered is not None else None
        model = copy.deepcopy(original)
        before = self.measure(model, test, trig)
        details = self.repair(model, x, y)
        after = self.measure(model.eval(), test, trig)
        self.artifact_ = model
        metrics: dict[str, Any] = {"before": before, "after": after, "n_clean": len(x), "n_test": len(test[0]),
                                   **details}
        if trig is not None:
            metrics["der"] = defense_effectiveness_rating(before["attack_success_rate"], after["attack_success_rate"],
                                                          before["clean_accuracy"], after["clean_accuracy"])
        return self.result(target, metrics, start)
