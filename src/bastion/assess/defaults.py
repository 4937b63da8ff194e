"""The default plan: every registered family's table (`Family.defaults`), sized for the device that will run it.

The device is decided first (`sizing_device`): a plan that says `device: cpu` gets CPU-sized budgets even on a
machine with a GPU, and `auto` sizes for the device the model was loaded on.
"""

from __future__ import annotations

from bastion.assess.plan import PLAN_VERSION, Plan
from bastion.families import registry
from bastion.families.evasion import class_distance, default_norm
from bastion.families.inputs import Inputs, ModelInfo

__all__ = ["class_distance", "default_norm", "default_plan", "sizing_device"]


def sizing_device(device: str, info: ModelInfo) -> str:
    """The device budgets are sized for: the plan's own (`cpu`, `cuda`, `cuda:N`), or for `auto` the device the
    model was actually loaded on."""
    device = (device or "auto").strip().lower()
    return info.device if device == "auto" else device


def default_plan(inputs: Inputs, info: ModelInfo, seed: int = 0, device: str = "auto") -> Plan:
    """A complete, validated plan for these inputs; the families size their budgets for `device` (decided
    before the plan: `auto` sizes for the device the model was loaded on). A family that does not assess this kind
    of model (`Family.kinds`: a classifier, a language model) is off, and the report says why."""
    sized_for = sizing_device(device, info)
    families = {name: plugin.defaults(inputs, info, sized_for, seed) if info.kind in plugin.kinds
                else {"enabled": False} for name, plugin in registry().items()}
    return Plan.from_dict({"version": PLAN_VERSION, "seed": seed, "device": device, "families": families})
