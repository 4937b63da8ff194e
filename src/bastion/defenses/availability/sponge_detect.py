"""A density and latency anomaly detector in front of the model, re-measured against sponge examples.

Sponge examples (Shumailov et al., "Sponge Examples: Energy-Latency Attacks on Neural Networks", EuroS&P 2021) raise
the activation density and latency of the inputs that carry them; the paper's proposed defence is to profile
natural inputs and cut off those that cost more. The detector is fitted on natural inputs only: half of `--data`
(a seeded split) gives the natural distributions of per-input activation density and latency, and each threshold
is the quantile at 1 − `fpr`/2 of its distribution, so the union of both alarms has a false-alarm rate of at most
`fpr` on natural inputs (Bonferroni). The other half measures the false alarms actually raised; the overhead is the
per-input latency of the guarded forward pass (activation hooks plus the comparison) over the plain one.

Then the same attack is re-measured: the white-box sponge (`bastion.attacks.availability.sponge.Sponge`) crafted
from the held-out inputs, as is (the fraction detected and the amplification of what passes), and adaptively:
an attacker who knows the density threshold keeps the densest iterate whose density stays under it
(`Sponge(max_density=...)`), and what amplification that still buys is reported. Latency is an alarm too, but on
dense CPU/GPU kernels a sponge barely moves it; the figures say which alarm fired.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from bastion.attacks.availability import measure
from bastion.attacks.availability.sponge import Sponge
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.results import Result
from bastion.core.target import Access, Target
from bastion.defenses.base import Defense, require_data


def _ratio(attack: np.ndarray, natural: np.ndarray, n_bootstrap: int, seed: int) -> dict[str, Any] | None:
    """Amplification of `attack` over `natural` (None when no attack input is left to measure)."""
    if len(attack) == 0:
        return None
    return measure.ratio(attack, natural, n_bootstrap, seed)


@register("defenses", "sponge-detect", family="detect")
class SpongeDetect(Defense):
    """Density/latency anomaly detector fitted on natural inputs, re-measured against sponge examples (plain and
    adaptive) with its false alarms and latency overhead on natural inputs (Shumailov et al., EuroS&P 2021).

    `fpr` is the stated false-alarm rate the thresholds are set for (natural quantiles, never the attack's);
    `steps`/`eps` configure the sponge attack it is re-measured against; `repeats` timings per input.

    Example:
        >>> from bastion.defenses.availability.sponge_detect import SpongeDetect
        >>> result = SpongeDetect(fpr=0.05).run(target, data)  # doctest: +SKIP
        >>> from bastion.families import judged  # the availability family judges what the run measured
        >>> judged(result).findings  # doctest: +SKIP
    """

    name = "sponge-detect"
    family = "detect"
    threat = "availability"
    requires = Access.GRADIENTS

    def __init__(self, fpr: float = 0.05, *, steps: int = 60, eps: float | None = None, repeats: int = 3,
                 warmup: int = 2, threads: int = 1, n_bootstrap: int = 500, seed: int = 0):
        if not 0 < fpr < 1:
            raise ParameterError(f"fpr must be in (0, 1), got {fpr}")
        if steps < 1 or repeats < 1 or warmup < 0 or threads < 1 or n_bootstrap < 0:
            raise ParameterError("steps, repeats and threads must be >= 1, warmup and n_bootstrap >= 0")
        self.fpr, self.steps, self.eps = float(fpr), int(steps), eps
        self.repeats, self.warmup, self.threads = int(repeats), int(warmup), int(threads)
        self.n_bootstrap, self.seed = int(n_bootstrap), int(seed)
        self.thresholds_: dict[str, float] = {}

    def fit(self, target: Target, natural: torch.Tensor) -> SpongeDetect:
        """Thresholds from natural inputs: density and latency quantiles at 1 − fpr/2."""
        probe = measure.ActivationProbe(measure.white_box_model(target, "sponge-detect"))
        density = probe.density(natural)[0]
        latency = self._latency(target, natural)
        q = 1 - self.fpr / 2
        self.thresholds_ = {"density": float(np.quantile(density, q)), "latency_ms": float(np.quantile(latency, q))}
        return self

    def _latency(self, target: Target, x: torch.Tensor) -> np.ndarray:
        return measure.latencies(target, x, self.repeats, self.warmup, self.threads) * 1e3

    def flags(self, density: np.ndarray, latency_ms: np.ndarray) -> dict[str, np.ndarray]:
        """Which inputs each alarm flags, and their union."""
        by_density = density > self.thresholds_["density"]
        by_latency = latency_ms > self.thresholds_["latency_ms"]
        return {"density": by_density, "latency": by_latency, "any": by_density | by_latency}

    def _guarded_ms(self, target: Target, probe: measure.ActivationProbe, x: torch.Tensor) -> np.ndarray:
        """Per-input latency of the guarded forward pass: the model with the density hooks, then the test."""
        out = np.empty(len(x))
        with measure.fixed_threads(self.threads), torch.no_grad():
            for _ in range(self.warmup):
                probe.density(x[:1])
            for i in range(len(x)):
                times = []
                for _ in range(self.repeats):
                    start = time.perf_counter()
                    d = probe.density(x[i:i + 1])[0]
                    _ = d > self.thresholds_["density"]
                    times.append(time.perf_counter() - start)
                out[i] = float(np.median(times))
        return out * 1e3

    def _against(self, target: Target, probe: measure.ActivationProbe, natural: torch.Tensor,
                 nat: dict[str, np.ndarray], adaptive: bool) -> dict[str, Any]:
        sponge = Sponge(steps=self.steps, eps=self.eps, max_density=self.thresholds_["density"] if adaptive else None,
                        seed=self.seed)
        with measure.fixed_threads(self.threads):
            crafted = sponge.craft(target, natural).detach()
        density = probe.density(crafted)[0]
        latency = self._latency(target, crafted)
        flagged = self.flags(density, latency)
        passed = ~flagged["any"]
        return {
            "attack": "sponge", "adaptive": adaptive, "n": len(crafted),
            "detected": float(flagged["any"].mean()), "detected_by_density": float(flagged["density"].mean()),
            "detected_by_latency": float(flagged["latency"].mean()),
            "amplification": {"density": measure.ratio(density, nat["density"], self.n_bootstrap, self.seed),
                              "latency_ms": measure.ratio(latency, nat["latency_ms"], self.n_bootstrap, self.seed)},
            "passed_amplification": {
                "density": _ratio(density[passed], nat["density"], self.n_bootstrap, self.seed),
                "latency_ms": _ratio(latency[passed], nat["latency_ms"], self.n_bootstrap, self.seed)},
        }

    def run(self, target: Target, data: Dataset | None = None, **datasets: Dataset) -> Result:
        self.check_access(target)
        data = require_data(data, "sponge-detect (natural inputs to fit on and to measure false alarms)")
        if len(data) < 8:
            raise ParameterError(f"sponge-detect needs at least 8 natural inputs (half to fit, half held out), "
                                 f"got {len(data)}")
        start, before = time.perf_counter(), target.queries
        torch.manual_seed(self.seed)
        x = torch.as_tensor(data.x, dtype=torch.float32, device=target.device)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed)).to(x.device)
        fit_x, held = x[order[: len(x) // 2]], x[order[len(x) // 2:]]
        self.fit(target, fit_x)
        probe = measure.ActivationProbe(measure.white_box_model(target, "sponge-detect"))
        nat = {"density": probe.density(held)[0], "latency_ms": self._latency(target, held)}
        alarms = self.flags(nat["density"], nat["latency_ms"])
        guarded = self._guarded_ms(target, probe, held)
        metrics = {
            "mitigation": "sponge-detect", "thresholds": dict(self.thresholds_), "n_fit": len(fit_x),
            "n_held_out": len(held),
            "false_alarms": {"target": self.fpr, "measured": float(alarms["any"].mean()),
                             "by_density": float(alarms["density"].mean()),
                             "by_latency": float(alarms["latency"].mean())},
            "overhead": {"plain_ms": measure.percentiles_ms(nat["latency_ms"]),
                         "guarded_ms": measure.percentiles_ms(guarded),
                         "ratio": float(np.median(guarded) / max(np.median(nat["latency_ms"]), 1e-9))},
            "against": [self._against(target, probe, held, nat, adaptive) for adaptive in (False, True)],
        }
        return self.result(target, metrics, start, before)
