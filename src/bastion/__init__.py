"""Bastion: find, measure and mitigate security threats to machine-learning models.

The public names below are imported on first use (PEP 562), so that `import bastion` (and with it the command
line's `--help`, `--version` and `list`) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "Access": "bastion.core.target",
    "Result": "bastion.core.results",
    "BastionError": "bastion.core.errors",
    "Dataset": "bastion.core.data",
    "Finding": "bastion.core.results",
    "Target": "bastion.core.target",
    "TorchTarget": "bastion.core.target",
    "load_dataset": "bastion.core.data_files",
    "assess": "bastion.assess",  # the package is callable: bastion.assess(model, data, ...) -> Assessment
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name == "assess":
        return importlib.import_module("bastion.assess")
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'bastion' has no attribute {name!r}")
