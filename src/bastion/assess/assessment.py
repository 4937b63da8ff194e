"""The result of one assessment: the inputs, the plan, the environment, and one FamilyReport per family."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar

from bastion.core.results import Finding, Serializable
from bastion.families.base import FamilyReport
from bastion.families.grading import sort_findings, worst

_PACKAGES = ("bastion-ml", "torch", "numpy", "scipy", "scikit-learn", "onnxruntime", "safetensors", "skops",
             "jinja2", "matplotlib", "ray")


def environment(backend: str = "local") -> dict[str, Any]:
    """Versions and machine facts for the reproducibility section."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                           "cpus": os.cpu_count() or 1, "backend": backend, "packages": versions}
    try:
        import torch

        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - facts for a report, never a failure
        pass
    return env


@dataclass
class Assessment(Serializable):
    """A finished (or interrupted) assessment: what the report, the store and `--fail-on` read."""

    _nested: ClassVar[dict[str, type]] = {"families": FamilyReport}

    run_id: str
    created: str
    status: str  # complete | interrupted | running
    model: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    backend: str = "local"
    families: list[FamilyReport] = field(default_factory=list)
    grade: str = "N/A"
    finished: str | None = None
    seconds: float = 0.0

    def family(self, name: str) -> FamilyReport | None:
        return next((f for f in self.families if f.family == name), None)

    def findings(self) -> list[Finding]:
        """Every finding, most severe first."""
        return sort_findings(f for fam in self.families for f in fam.findings)

    def worst_severity(self) -> str | None:
        return worst(self.findings())

    @property
    def complete(self) -> bool:
        """True when every planned job finished without error and none was stopped partway by a budget."""
        return self.status == "complete" and not any(fam.errors or fam.status in ("partial", "failed")
                                                     for fam in self.families)

    @property
    def title(self) -> str:
        return str(self.model.get("name") or self.inputs.get("model") or "model")
