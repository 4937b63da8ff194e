"""The Attack contract shared by every family.

Parameters go to `__init__` (validated there, no work done there); `run(target, data, ...)` does the work and
returns an `Result`. Each attack declares the access it needs; a target that grants less gets a clear
`AccessError` before any query is spent.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from bastion.core.data import Dataset
from bastion.core.params import constructor_params
from bastion.core.results import Result
from bastion.core.target import Access, Target


class Attack(ABC):
    """Base class: subclasses set `family`, `name`, `requires` and implement `run`."""

    family: ClassVar[str] = ""
    name: ClassVar[str] = ""
    requires: ClassVar[Access] = Access.LABELS

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters and their current values, as JSON values (scikit-learn convention)."""
        return constructor_params(self)

    def check_access(self, target: Target) -> None:
        target.require(self.requires, f"{self.family} attack '{self.name}'")

    @abstractmethod
    def run(self, target: Target, data: Dataset, **kwargs: Any) -> Result:  # pragma: no cover
        ...

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
