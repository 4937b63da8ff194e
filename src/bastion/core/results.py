"""Result and Finding dataclasses: every result serialises to JSON and back without loss."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

Severity = Literal["info", "low", "medium", "high", "critical"]
SEVERITIES: tuple[str, ...] = ("info", "low", "medium", "high", "critical")
RESULT_STATUSES: tuple[str, ...] = ("complete", "partial")

T = TypeVar("T", bound="Serializable")


def severity_rank(severity: str) -> int:
    """Order of a severity name (info=0 ... critical=4); a clear error for an unknown name."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise ValueError(f"unknown severity {severity!r}: use one of {', '.join(SEVERITIES)}") from None


def to_jsonable(value: Any) -> Any:
    """Convert numpy/torch scalars and arrays, tuples and dataclasses into plain JSON types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "detach") and hasattr(value, "tolist"):  # torch.Tensor without importing torch
        return value.detach().cpu().tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return value  # json writes NaN/Infinity and reads them back
    return value


class Serializable:
    """Mixin: `to_dict`, `to_json`, `from_dict`, `from_json` with nested dataclasses named in `_nested`."""

    _nested: ClassVar[dict[str, type]] = {}

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in data.items():
            if key not in names:
                continue
            nested = cls._nested.get(key)
            if nested is not None and isinstance(value, list):
                value = [nested.from_dict(v) for v in value]
            elif nested is not None and isinstance(value, dict):
                value = nested.from_dict(value)
            kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))


@dataclass
class Finding(Serializable):
    """A judged result: what was measured, how bad it is, and the evidence behind the verdict."""

    title: str
    family: str
    severity: Severity
    metric: str
    value: float | None = None
    threshold: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    atlas: list[str] = field(default_factory=list)
    owasp: list[str] = field(default_factory=list)
    description: str = ""
    recommendation: str = ""

    def __post_init__(self) -> None:
        severity_rank(self.severity)


@dataclass
class Result(Serializable):
    """What one attack, defense or scan run measured: the `--json` object of the CLI, plus its findings."""

    _nested: ClassVar[dict[str, type]] = {"findings": Finding}

    family: str
    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    queries: int = 0
    seconds: float = 0.0
    device: str = "cpu"
    findings: list[Finding] = field(default_factory=list)
    # per-sample outcomes when the run has them; evasion: `eps`, `correct` (n,) and `robust` (n, len(eps)) booleans
    samples: dict[str, Any] = field(default_factory=dict)
    # "complete", or "partial" when a query budget or deadline stopped the run; `reason` says which, and how far it got
    status: str = "complete"
    reason: str = ""

    def __post_init__(self) -> None:
        if self.status not in RESULT_STATUSES:
            raise ValueError(f"unknown result status {self.status!r}: use one of {', '.join(RESULT_STATUSES)}")

    @property
    def partial(self) -> bool:
        """True when a budget or deadline stopped the run before it finished."""
        return self.status == "partial"

    def worst_severity(self) -> str | None:
        """The highest severity among the findings, or None when there are none."""
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=severity_rank)

