"""One-command assessment: a plan (YAML, validated, defaults sized to the data and access), one plug-in per threat
family (`bastion.families`), grades, and a runner (local or Ray) that records every job in the run store.

    from bastion.assess import Inputs, assess, default_plan
    inputs = Inputs(model="model.pt", data=test, train_data=train, arch="pkg.models:build")
    result = assess(inputs, default_plan(inputs, inputs.describe()))
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Inputs": "bastion.families.inputs", "Plan": "bastion.assess.plan",
            "read_plan_file": "bastion.assess.plan", "default_plan": "bastion.assess.defaults",
            "Runner": "bastion.assess.runner", "assess": "bastion.assess.runner"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Lazy exports: importing the package  pulls in nothing else."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bastion.assess' has no attribute {name!r}")
