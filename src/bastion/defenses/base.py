"""The Defense contract shared by detection, repair and hardening defenses.

Same conventions as `Attack`: parameters in `__init__` (validated there, no work done there), `run(target, data,
**datasets)` does the work and returns an `Result` with `attack=<defense name>` and `family` the threat family whose
plug-in judges it (`threat`: "backdoor" for the backdoor detectors, else "defense"); defenses measure, families judge.
`dataset_params` names extra datasets the CLI loads from paths; a defense that produces a new model (repair,
hardening) leaves it in `artifact_`, which the CLI saves with `--out`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import nn

from bastion.core.data import Dataset
from bastion.core.errors import AccessError, ParameterError
from bastion.core.params import constructor_params
from bastion.core.results import Result
from bastion.core.target import Access, Target, TorchTarget


class Defense(ABC):
    """Base class: subclasses set `name`, `family` (e.g. "detect", "repair"), `requires` and implement `run`."""

    family: ClassVar[str] = ""
    threat: ClassVar[str] = "defense"  # the family of its results: the bastion.families plug-in that judges them
    name: ClassVar[str] = ""
    requires: ClassVar[Access] = Access.LABELS
    dataset_params: ClassVar[tuple[str, ...]] = ()
    artifact_: nn.Module | None = None

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters and their current values, as JSON values (scikit-learn convention)."""
        return constructor_params(self)

    def check_access(self, target: Target) -> None:
        target.require(self.requires, f"defense '{self.name}'")

    @abstractmethod
    def run(self, target: Target, data: Dataset | None = None, **datasets: Dataset) -> Result:  # pragma: no cover
        ...

    def result(self, target: Target, metrics: dict[str, Any], start: float, queries_before: int = 0) -> Result:
        """Package metrics as the defense's `Result` (family `threat`); findings come from its family's verdicts
        (`bastion.families.judged`)."""
        return Result(family=self.threat, attack=self.name, params=self.get_params(), metrics=metrics,
                            queries=target.queries - queries_before, seconds=time.perf_counter() - start,
                            device=str(target.device))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def torch_module(target: Target, what: str) -> nn.Module:
    """The nn.Module behind a white-box target; a clear AccessError for other targets."""
    if not isinstance(target, TorchTarget):
        raise AccessError(f"{what} needs the model's internals: load a PyTorch model, not {target.name}")
    return target.model


def require_data(data: Dataset | None, what: str, flag: str = "--data") -> Dataset:
    """`data` itself, or a ParameterError telling the user which flag supplies it."""
    if data is None or len(data) == 0:
        raise ParameterError(f"{what} needs data: pass {flag} FILE")
    return data
