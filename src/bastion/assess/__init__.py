"""One-command assessment: a plan (YAML, validated, defaults sized to the data, the access and the device), one
plug-in per threat family (`bastion.families`), grades, and a runner (local or Ray) that records every job in the
run store.

The package is callable: `bastion.assess(model, data, ...)` is `bastion.assess.api.assess` (see there):

    import bastion
    result = bastion.assess("model.pt2", "test.npz", train_data="train.npz", arch="pkg.models:build")
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_EXPORTS = {"Inputs": "bastion.families.inputs", "Plan": "bastion.assess.plan",
            "read_plan_file": "bastion.assess.plan", "default_plan": "bastion.assess.defaults",
            "Runner": "bastion.assess.runner", "assess": "bastion.assess.api", "assess_inputs": "bastion.assess.api"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Lazy exports: importing the package pulls in nothing else."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bastion.assess' has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    """`bastion.assess` is both this package and the one-call API: importing a submodule binds the package to
    the attribute `bastion.assess`, so the package itself answers the call."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from bastion.assess.api import assess

        return assess(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
