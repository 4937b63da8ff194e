"""Shared machinery of the training defenses: a trainable copy of the model, the data, the before/after report.

A training defense never changes the model it is given: it trains a copy (fine-tuning by default, or from freshly
initialised weights with `from_scratch`), leaves it in `artifact_` for the CLI's `--out`, and reports the honest
before/after comparison of `defenses.before_after`.
"""

from __future__ import annotations

import copy
import io
import time
from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from bastion.attacks.evasion.base import parse_eps
from bastion.attacks.evasion.norms import check_norm
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.results import Result
from bastion.core.target import Access, Target, TorchTarget
from bastion.core.training import Trainer
from bastion.defenses.base import Defense, require_data, torch_module
from bastion.defenses.before_after import clean_comparison, compare
from bastion.defenses.preprocess.transforms import exportable


def compiled_parts(model: nn.Module) -> list[nn.Module]:
    """The outermost TorchScript modules inside `model` (a loaded `.pt` file is one, wrapped or not)."""
    found: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, torch.jit.ScriptModule) and not any(module in list(f.modules()) for f in found):
            found.append(module)
    return found


def _script_copy(module: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer, map_location=next(module.parameters()).device)


def trainable_copy(model: nn.Module) -> nn.Module:
    """An independent copy of `model` whose parameters can be optimised. TorchScript parts are copied through
    their bytes (a deep copy of a ScriptModule has parameters that optimisers refuse)."""
    if isinstance(model, torch.jit.ScriptModule):
        return _script_copy(model)
    memo = {id(part): _script_copy(part) for part in compiled_parts(model)}
    return copy.deepcopy(model, memo)


def reinitialize(model: nn.Module) -> nn.Module:
    """Fresh weights for every layer (its own `reset_parameters`); an error when a layer cannot be reset."""
    stuck = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
            module.reset_parameters()
        else:
            stuck.append(name or type(module).__name__)
    if stuck:
        raise ParameterError(f"cannot re-initialise layer(s) {', '.join(stuck[:3])} (e.g. a TorchScript model): load "
                             "weights with --arch module:factory or fine-tune with --from-scratch false")
    return model


def hardened_target(target: TorchTarget, model: nn.Module, suffix: str) -> TorchTarget:
    """A white-box target for the hardened model, with the original's shape, bounds and device."""
    return TorchTarget(model, target.input_shape, target.n_classes, target.bounds, target.device, Access.GRADIENTS,
                       None, target.batch_size, f"{target.name} + {suffix}")


class TrainingDefense(Defense, metaclass=ABCMeta):
    """Base: subclasses implement `train(model, data, target) -> (model, metrics)`; they measure, and
    `bastion.families.defense_verdicts` judges."""

    family: ClassVar[str] = "training"
    requires: ClassVar[Access] = Access.GRADIENTS
    from_scratch_default: ClassVar[bool] = False

    def _training(self, epochs: int, batch_size: int, lr: float, optimizer: str, from_scratch: bool,
                  eval_eps: float | str | Sequence[float] | None, norm: str, attack: str, seed: int) -> None:
        """Validate and store the parameters every training defense shares (`eval_eps` None: no robustness
        evaluation, clean accuracy only)."""
        self.epochs, self.batch_size, self.lr = int(epochs), int(batch_size), float(lr)
        self.optimizer, self.from_scratch, self.seed = str(optimizer), bool(from_scratch), int(seed)
        Trainer(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer)
        self.eval_eps = None if eval_eps is None else parse_eps(eval_eps)
        self.norm, self.attack = check_norm(norm), str(attack)

    def trainer(self, target: Target, **overrides: Any) -> Trainer:
        """The shared training loop with this defense's hyper-parameters, on the target's device."""
        kwargs = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "optimizer": self.optimizer,
                  "seed": self.seed, "device": str(target.device), "description": self.name, **overrides}
        return Trainer(**kwargs)

    @abstractmethod
    def train(self, model: nn.Module, data: Dataset, target: TorchTarget) -> tuple[nn.Module, dict[str, Any]]:
        """Train `model` in place on `data`; return it with its training metrics."""

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model this defense cannot train, before any work (none refused by default)."""

    def extra_report(self, before: TorchTarget, after: TorchTarget, data: Dataset,
                     train_data: Dataset) -> dict[str, Any]:
        """More before/after measurements (DP-SGD adds membership inference); none by default."""
        return {}

    def run(self, target: Target, data: Dataset | None = None, train_data: Dataset | None = None,
            **_: Any) -> Result:
        self.check_access(target)
        module = torch_module(target, f"defense '{self.name}'")
        self.check_model(module)
        train = require_data(train_data, f"defense '{self.name}'", "--train-data")
        data = require_data(data, f"the before/after evaluation of '{self.name}'")
        start, queries = time.perf_counter(), target.queries
        model = trainable_copy(module).to(target.device)
        if self.from_scratch:
            reinitialize(model)
        model, metrics = self.train(model, train, target)
        after = hardened_target(target, model, self.name)
        if self.eval_eps is not None:
            comparison = compare(target, after, data, self.eval_eps, self.norm, self.attack, seed=self.seed,
                                 what=self.name)
        else:
            comparison = clean_comparison(target, after, data)
        extra = self.extra_report(target, after, data, train)
        self.artifact_ = exportable(model.eval(), model, target.input_shape)
        self.hardened_ = after
        return self.result(target, {**comparison, **metrics, **extra}, start, queries)
