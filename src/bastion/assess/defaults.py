"""The default plan, sized to the data and to what the model grants.

- evasion: L∞ for images, L2 for feature vectors; the epsilons are fractions (5%, 10%, 20%, 40%) of the median
  distance from a sample to the nearest sample of another class, so they mean the same thing on every dataset;
  FGSM, PGD and APGD-CE for white-box models (the `auto` ensemble instead of APGD-CE on a GPU), Square for
  score APIs, HopSkipJump for label APIs;
- privacy: LOSS always (scores), LiRA when reference models can be trained (PyTorch with --arch, scikit-learn),
  the label-only attack for label-only APIs; as many members as non-members;
- extraction: half of --data is the attacker's pool, budgets at 1/8, 1/4, 1/2 and all of it;
- backdoor: Neural Cleanse for white-box models with at least 3 classes; activation clustering of --train-data;
- supply chain: the model file.
A GPU raises the sample counts and iterations.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bastion.assess.inputs import Inputs, ModelInfo
from bastion.assess.plan import PLAN_VERSION, Plan
from bastion.core import registry
from bastion.core.target import Access

EPS_FRACTIONS = (0.05, 0.1, 0.2, 0.4)


def registered(kind: str, family: str, name: str) -> bool:
    return any(e["name"] == name for e in registry.entries(kind, family))


def _round2(value: float) -> float:
    """Two significant digits."""
    if value <= 0:
        return value
    digits = 1 - int(math.floor(math.log10(value)))
    return round(value, digits)


def class_distance(x: np.ndarray, y: np.ndarray, norm: str, seed: int, n_probe: int = 200,
                   n_ref: int = 2000) -> float:
    """Median distance from a sample to the nearest sample of another class (on seeded subsets)."""
    rng = np.random.default_rng([seed, 7])
    flat = x.reshape(len(x), -1).astype(np.float64)
    probe = rng.permutation(len(x))[:n_probe]
    ref = rng.permutation(len(x))[:n_ref]
    best = np.full(len(probe), np.inf)
    for chunk in np.array_split(np.arange(len(ref)), max(1, len(ref) // 256)):
        diff = flat[probe][:, None, :] - flat[ref[chunk]][None, :, :]
        if norm == "linf":
            dist = np.abs(diff).max(-1)
        elif norm == "l1":
            dist = np.abs(diff).sum(-1)
        else:
            dist = np.sqrt((diff ** 2).sum(-1))
        other = y[probe][:, None] != y[ref[chunk]][None, :]
        best = np.minimum(best, np.where(other, dist, np.inf).min(-1))
    finite = best[np.isfinite(best)]
    return float(np.median(finite)) if len(finite) else 0.0


def default_eps(inputs: Inputs, info: ModelInfo, norm: str, seed: int) -> list[float]:
    """Epsilons as fractions of the typical distance to another class, below half the input range."""
    dim = float(np.prod(info.input_shape))
    width = info.bounds[1] - info.bounds[0]
    full = width * {"linf": 1.0, "l2": dim ** 0.5, "l1": dim}[norm]
    scale = class_distance(inputs.data.x, inputs.data.y, norm, seed) or 0.1 * full
    eps = sorted({_round2(min(f * scale, 0.45 * full)) for f in EPS_FRACTIONS})
    return [e for e in eps if e > 0] or [_round2(0.01 * full)]


def default_norm(input_shape: tuple[int, ...] | list[int]) -> str:
    """L∞ for images (two or more input dimensions), L2 for feature vectors: `assess` and `attack` agree."""
    return "linf" if len(input_shape) >= 2 else "l2"


def evasion_section(inputs: Inputs, info: ModelInfo, gpu: bool, seed: int) -> dict[str, Any]:
    norm = default_norm(info.input_shape)
    n = min(len(inputs.data), 1000 if gpu else 500)
    attacks: dict[str, dict[str, Any]] = {}
    if info.access_level >= Access.GRADIENTS:
        attacks = {"fgsm": {}, "pgd": {"steps": 50 if gpu else 20}}
        strongest = "auto" if gpu and registered("attacks", "evasion", "auto") else "apgd-ce"
        if registered("attacks", "evasion", strongest):
            attacks[strongest] = {}
    elif info.access_level >= Access.SCORES and registered("attacks", "evasion", "square"):
        attacks = {"square": {}}
    elif registered("attacks", "evasion", "hopskipjump"):
        attacks = {"hopskipjump": {}}
    return {"enabled": True, "n_samples": n, "norm": norm, "eps": default_eps(inputs, info, norm, seed),
            "shards": max(1, math.ceil(n / 256)), "sanity": True, "attacks": attacks}


def privacy_section(inputs: Inputs, info: ModelInfo, gpu: bool) -> dict[str, Any]:
    n_train = len(inputs.train_data) if inputs.train_data is not None else 0
    n = max(2, min(n_train or 2, max(2, 2 * len(inputs.data) // 3), 1000 if gpu else 500))
    attacks: dict[str, dict[str, Any]] = {}
    if info.access_level >= Access.SCORES:
        attacks["loss"] = {}
        if (info.white_box and inputs.arch) or info.estimator:
            attacks["lira"] = {"n_reference": 8 if gpu else 4, "mode": "online"}
    elif registered("attacks", "privacy", "label-only"):
        attacks["label-only"] = {}
    return {"enabled": True, "n_members": n, "n_nonmembers": n, "attacks": attacks}


def extraction_section(inputs: Inputs, info: ModelInfo) -> dict[str, Any]:
    pool = max(1, int(round(0.5 * len(inputs.data))))
    budgets = sorted({max(1, pool // k) for k in (8, 4, 2, 1)})
    return {"enabled": True, "budgets": budgets, "pool_fraction": 0.5, "attacks": {"knockoff": {}}}


def backdoor_section(inputs: Inputs, info: ModelInfo, gpu: bool) -> dict[str, Any]:
    scanners: dict[str, dict[str, Any]] = {}
    if info.white_box and info.n_classes >= 3:
        scanners["neural-cleanse"] = {"steps": 300}
    if info.white_box and inputs.train_data is not None:
        scanners["activation-clustering"] = {}
    return {"enabled": True, "n_samples": min(len(inputs.data), 500 if gpu else 200), "scanners": scanners}


def default_plan(inputs: Inputs, info: ModelInfo, seed: int = 0, device: str = "auto") -> Plan:
    """A complete, validated plan for these inputs."""
    gpu = info.device.startswith("cuda")
    families = {
        "evasion": evasion_section(inputs, info, gpu, seed),
        "privacy": privacy_section(inputs, info, gpu),
        "extraction": extraction_section(inputs, info),
        "backdoor": backdoor_section(inputs, info, gpu),
        "supply_chain": {"enabled": True, "paths": []},
    }
    return Plan.from_dict({"version": PLAN_VERSION, "seed": seed, "device": device, "families": families})
