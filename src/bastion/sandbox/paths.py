"""Paths that cross into the sandbox are absolute.

The worker starts in its private scratch folder, so a model or `--arch file.py:factory` named relative to the
user's folder would not be found there. Only the names change: what the worker may read is still only what was
bound read-only for it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


def absolute_model(model: str, arch: str | None) -> tuple[str, str | None]:
    """MODEL and an `--arch file.py:factory` made absolute (URLs, module names and absent files left as they are)."""
    if "://" not in model and Path(model).exists():
        model = str(Path(model).absolute())
    if arch and ":" in arch:
        module, _, factory = arch.rpartition(":")
        if module.endswith(".py") and Path(module).exists():
            arch = f"{Path(module).absolute()}:{factory}"
    return model, arch


def with_absolute_paths(payload: dict[str, Any]) -> dict[str, Any]:
    """A job payload whose `load` table or assessment `inputs` name the model by absolute paths."""
    payload = dict(payload)
    load = payload.get("load")
    if isinstance(load, dict) and isinstance(load.get("path"), str):
        path, arch = absolute_model(load["path"], load.get("arch"))
        payload["load"] = {**load, "path": path, "arch": arch}
    inputs = payload.get("inputs")
    if dataclasses.is_dataclass(inputs) and isinstance(getattr(inputs, "model", None), str):
        path, arch = absolute_model(inputs.model, inputs.arch)
        payload["inputs"] = dataclasses.replace(inputs, model=path, arch=arch)
    return payload
