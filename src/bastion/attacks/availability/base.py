"""Shared run of availability attacks: craft inputs, then measure them against the natural inputs they came from.

Subclasses implement `craft(target, x) -> x_attack` (and may add dimensions with `extra_dimensions`). `run` then
measures, for the natural and the crafted inputs alike: activation density (white-box targets whose activation
layers Bastion can read), per-input latency (p50/p95/p99), throughput and, where the machine exposes it, energy per
input. Each dimension is an amplification ratio (attack over natural) with a bootstrap interval; the family judges
them (`judge.judge_availability`). Attacks only measure.
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch

from bastion.attacks.availability import measure
from bastion.attacks.availability.energy import NOT_EXPOSED, EnergyMeter
from bastion.attacks.base import Attack
from bastion.attacks.evasion.norms import check_norm
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.results import Result
from bastion.core.target import Access, Target

SAMPLES = ("natural_density", "attack_density", "natural_latency_ms", "attack_latency_ms")  # per input, in samples


def check_budget(eps: float | None, norm: str) -> tuple[float | None, str]:
    """Validate an optional Lp budget (None: anywhere within the model's input bounds)."""
    norm = check_norm(norm)
    if eps is None:
        return None, norm
    eps = float(eps)
    if not math.isfinite(eps) or eps <= 0:
        raise ParameterError(f"eps must be positive and finite (or unset for no budget), got {eps}")
    return eps, norm


def refuse_huge_eps(eps: float | None, norm: str, target: Target) -> None:
    """A budget at least the diameter of the input box constrains nothing: refuse it (leave eps unset instead)."""
    if eps is None:
        return
    width = target.bounds[1] - target.bounds[0]
    d = math.prod(target.input_shape)
    diameter = {"linf": width, "l2": width * math.sqrt(d), "l1": width * d}[norm]
    if eps >= diameter:
        raise ParameterError(f"eps {eps:g} ({norm}) covers the whole input range (diameter {diameter:g}): it "
                             "constrains nothing; leave eps unset for an unconstrained attack")


class AvailabilityAttack(Attack):
    """Base of availability attacks: `craft` the inputs, `run` measures them against natural inputs.

    `repeats` timings per input (median kept) after `warmup` calls, with `threads` torch threads; `energy`
    measures joules per input where RAPL or NVML is readable; `n_bootstrap` resamples for the intervals."""

    family: ClassVar[str] = "availability"
    requires: ClassVar[Access] = Access.GRADIENTS

    def __init__(self, *, repeats: int = 5, warmup: int = 3, threads: int = 1, energy: bool = True,
                 n_bootstrap: int = 1000, seed: int = 0):
        if repeats < 1 or warmup < 0 or threads < 1 or n_bootstrap < 0:
            raise ParameterError("repeats and threads must be >= 1, warmup and n_bootstrap >= 0")
        self.repeats, self.warmup, self.threads = int(repeats), int(warmup), int(threads)
        self.energy, self.n_bootstrap, self.seed = bool(energy), int(n_bootstrap), int(seed)

    @abstractmethod
    def craft(self, target: Target, x: torch.Tensor) -> torch.Tensor:
        """The attack inputs for the natural inputs `x` (same shape, within the target's bounds)."""

    def extra_dimensions(self, target: Target, natural: torch.Tensor, attack: torch.Tensor) -> list[dict[str, Any]]:
        """More measured dimensions (e.g. exit depth); each as `measure.compare` returns it."""
        return []

    def details(self) -> dict[str, Any]:
        """Attack-specific figures added to the metrics (after `craft`)."""
        return {}

    def run(self, target: Target, data: Dataset, **kwargs: Any) -> Result:
        self.check_access(target)
        torch.manual_seed(self.seed)
        start = time.perf_counter()
        natural = torch.as_tensor(data.x, dtype=torch.float32, device=target.device)
        with measure.fixed_threads(self.threads):
            crafted = self.craft(target, natural).detach()
        if crafted.shape != natural.shape:
            raise ParameterError("crafted inputs changed shape")  # pragma: no cover - subclasses keep the shape
        metrics = self.measure(target, natural, crafted)
        metrics.update(self.details())
        return Result(family=self.family, attack=self.name, params=self.get_params(), metrics=metrics,
                      queries=target.queries, seconds=time.perf_counter() - start, device=str(target.device),
                      samples={key: metrics.pop(f"_{key}", []) for key in SAMPLES})

    def measure(self, target: Target, natural: torch.Tensor, crafted: torch.Tensor) -> dict[str, Any]:
        """Every dimension this machine and target allow, natural vs crafted."""
        dims: list[dict[str, Any]] = []
        metrics: dict[str, Any] = {"n": len(natural), "threads": self.threads, "repeats": self.repeats}
        model = getattr(target, "model", None)
        if target.access >= Access.GRADIENTS and model is not None:
            try:
                probe = measure.ActivationProbe(model)
            except ParameterError as err:
                metrics["density_note"] = str(err)
            else:
                nat, per_nat = probe.density(natural)
                att, per_att = probe.density(crafted)
                dims.append(self._compare("density", att, nat))
                metrics["density_per_layer"] = {"natural": per_nat, "attack": per_att}
                if probe.skipped:
                    metrics["density_note"] = f"layers not read from the graph: {', '.join(probe.skipped)}"
                metrics["_natural_density"], metrics["_attack_density"] = nat.tolist(), att.tolist()
        nat_t = measure.latencies(target, natural, self.repeats, self.warmup, self.threads)
        att_t = measure.latencies(target, crafted, self.repeats, self.warmup, self.threads)
        dims.append(self._compare("latency_ms", att_t * 1e3, nat_t * 1e3, measure.percentiles_ms))
        metrics["_natural_latency_ms"], metrics["_attack_latency_ms"] = (nat_t * 1e3).tolist(), (att_t * 1e3).tolist()
        tp_nat = measure.throughput(target, natural, threads=self.threads)
        tp_att = measure.throughput(target, crafted, threads=self.threads)
        metrics["throughput"] = {"natural": tp_nat, "attack": tp_att, "slowdown": tp_nat / max(tp_att, 1e-12)}
        metrics["energy"] = self._energy(target, natural, crafted, dims)
        dims.extend(self.extra_dimensions(target, natural, crafted))
        metrics["dimensions"] = dims
        return metrics

    def _compare(self, name: str, attack: np.ndarray, natural: np.ndarray, summary: Any = None) -> dict[str, Any]:
        out = measure.compare(name, attack, natural, seed=self.seed, summary=summary)
        out["ratio"] = measure.ratio(attack, natural, self.n_bootstrap, self.seed)
        return out

    def _energy(self, target: Target, natural: torch.Tensor, crafted: torch.Tensor,
                dims: list[dict[str, Any]]) -> dict[str, Any]:
        meter = EnergyMeter(target.device)
        if not self.energy or not meter.available:
            return {"available": False, "note": NOT_EXPOSED if self.energy else "energy: not measured (energy=False)"}
        per_input = {}
        with measure.fixed_threads(self.threads), torch.no_grad():
            for key, x in (("natural", natural), ("attack", crafted)):
                rounds = []
                for _ in range(3):
                    joules, done = meter.joules(lambda x=x: (target.labels(x), len(x))[1])
                    rounds.append(joules / max(done, 1))
                per_input[key] = np.asarray(rounds)
        dims.append(self._compare("energy_j", per_input["attack"], per_input["natural"]))
        return {"available": True, "source": meter.source, "note": "whole-device counter: other load adds noise"}
