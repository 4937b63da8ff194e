"""Bounds on the work of one request, re-measured against the availability attacks: input limits and deadlines for
classifiers (`resource-limits`), generation caps and deadlines for language models (`generation-cap`,
`generation-deadline`).

OWASP LLM10:2025 (Unbounded Consumption) and Shumailov et al. ("Sponge Examples", EuroS&P 2021) both name the same
first line of defence: bound the input size, the output length and the time of every request. Each bound is proven
by re-running the attack against the bounded model: the input-size attack against a model that refuses inputs
larger than the natural shape; sponge and (for early-exit models) DeepSloth inputs against a per-request deadline
(derived from natural inputs: `deadline_x` times their p99 unless given); over-generation against a lower
`max_new_tokens`. The cost is measured on natural inputs too: refused natural inputs, natural requests cut by the
deadline, natural replies truncated by the cap.

A classifier's deadline is modelled, not enforced: a request served under it costs min(latency, deadline) (a server
cancels it there and answers an error), which is what the amplification after the mitigation reports; a forward
pass is not preempted in-process. A language model's deadline is enforced: generation stops when it passes
(`generation-deadline`).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.attacks.availability import measure
from bastion.attacks.availability.deepsloth import EarlyExitSlowdown
from bastion.attacks.availability.input_size import InputSize
from bastion.attacks.availability.lm import Overgen, as_lm_target, paired_stats
from bastion.attacks.availability.sponge import Sponge
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.results import Result
from bastion.core.target import Access, Target, TorchTarget
from bastion.defenses.base import Defense, require_data


class SizeLimited(nn.Module):
    """`model` behind an input-size limit: inputs with more than `max_elements` values per sample are refused."""

    def __init__(self, model: nn.Module, max_elements: int):
        super().__init__()
        self.model, self.max_elements = model, int(max_elements)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x[0].numel() > self.max_elements:
            raise ParameterError(f"input of {x[0].numel()} values refused (limit {self.max_elements})")
        return self.model(x)


def _served(latency_ms: np.ndarray, deadline_ms: float) -> np.ndarray:
    return np.minimum(latency_ms, deadline_ms)


@register("defenses", "resource-limits", family="limit")
class ResourceLimits(Defense):
    """Input-size limit and per-request deadline, re-measured against input-size growth, sponge examples and (on
    early-exit models) DeepSloth, with their cost to natural inputs (Shumailov et al., EuroS&P 2021; Hong et al.,
    ICLR 2021).

    `max_scale` is the accepted input size relative to the natural one (1: the natural shape only); `deadline_ms`
    the per-request deadline (None: `deadline_x` × the natural p99 latency); `steps` of each attack.

    Example:
        >>> from bastion.defenses.availability.request_limits import ResourceLimits
        >>> result = ResourceLimits(deadline_x=2.0).run(target, data)  # doctest: +SKIP
    """

    name = "resource-limits"
    family = "limit"
    threat = "availability"
    requires = Access.GRADIENTS

    def __init__(self, max_scale: float = 1.0, *, deadline_ms: float | None = None, deadline_x: float = 2.0,
                 steps: int = 30, repeats: int = 3, warmup: int = 2, threads: int = 1, n_bootstrap: int = 500,
                 seed: int = 0):
        if not (math.isfinite(max_scale) and max_scale >= 1):
            raise ParameterError(f"max_scale must be at least 1 (the natural input size), got {max_scale}")
        if deadline_ms is not None and not (math.isfinite(deadline_ms) and deadline_ms > 0):
            raise ParameterError(f"deadline_ms must be positive (or unset), got {deadline_ms}")
        if not (math.isfinite(deadline_x) and deadline_x >= 1) or steps < 1 or repeats < 1 or threads < 1:
            raise ParameterError("deadline_x must be >= 1; steps, repeats and threads >= 1")
        self.max_scale, self.deadline_ms, self.deadline_x = float(max_scale), deadline_ms, float(deadline_x)
        self.steps, self.repeats, self.warmup, self.threads = int(steps), int(repeats), int(warmup), int(threads)
        self.n_bootstrap, self.seed = int(n_bootstrap), int(seed)

    def _latency(self, target: Target, x: torch.Tensor) -> np.ndarray:
        return measure.latencies(target, x, self.repeats, self.warmup, self.threads) * 1e3

    def _input_limit(self, target: Target, data: Dataset) -> dict[str, Any]:
        model = measure.white_box_model(target, "resource-limits")
        limit = int(self.max_scale * math.prod(target.input_shape))
        limited = TorchTarget(SizeLimited(model, limit), target.input_shape, device=target.device,
                              bounds=target.bounds)
        attack = {"max_scale": 8, "n_inputs": 4, "repeats": self.repeats, "n_bootstrap": self.n_bootstrap,
                  "seed": self.seed}
        before, after = InputSize(**attack).run(target, data), InputSize(**attack).run(limited, data)
        x = torch.as_tensor(data.x, dtype=torch.float32, device=target.device)
        refused = sum(1 for i in range(len(x)) if x[i].numel() > limit)

        def ratio(result: Result) -> float:
            dims = result.metrics["dimensions"]
            return float(dims[0]["ratio"]["estimate"]) if dims else 1.0

        return {"mitigation": "input-size limit", "limit_elements": limit, "attack": "input-size",
                "before": {"largest_scale": before.metrics["largest_accepted_scale"], "latency_ratio": ratio(before),
                           "limit": before.metrics["limit"]},
                "after": {"largest_scale": after.metrics["largest_accepted_scale"], "latency_ratio": ratio(after),
                          "limit": after.metrics["limit"]},
                "natural_refused": refused / max(len(x), 1)}

    def _deadline(self, target: Target, natural: torch.Tensor) -> dict[str, Any]:
        nat = self._latency(target, natural)
        deadline = float(self.deadline_ms or self.deadline_x * np.percentile(nat, 99))
        attacks: list[tuple[str, Any]] = [("sponge", Sponge(steps=self.steps, seed=self.seed)),
                                          ("early-exit", EarlyExitSlowdown(steps=self.steps, seed=self.seed))]
        rows = []
        for name, attack in attacks:
            try:
                with measure.fixed_threads(self.threads):
                    crafted = attack.craft(target, natural).detach()
            except ParameterError as exc:  # e.g. no exits Bastion can read
                rows.append({"attack": name, "not_applicable": str(exc)})
                continue
            att = self._latency(target, crafted)
            rows.append({"attack": name, "cut": float((att > deadline).mean()),
                         "before": measure.ratio(att, nat, self.n_bootstrap, self.seed),
                         "after": measure.ratio(_served(att, deadline), _served(nat, deadline), self.n_bootstrap,
                                                self.seed),
                         "worst_case_bound": deadline / max(float(np.mean(_served(nat, deadline))), 1e-9)})
        return {"mitigation": "deadline", "deadline_ms": deadline, "modelled": True,
                "natural_cut": float((nat > deadline).mean()), "natural_ms": measure.percentiles_ms(nat),
                "against": rows}

    def run(self, target: Target, data: Dataset | None = None, **datasets: Dataset) -> Result:
        self.check_access(target)
        data = require_data(data, "resource-limits (natural inputs)")
        start, before = time.perf_counter(), target.queries
        torch.manual_seed(self.seed)
        natural = torch.as_tensor(data.x, dtype=torch.float32, device=target.device)
        metrics = {"mitigation": "resource-limits", "limits": [self._input_limit(target, data),
                                                              self._deadline(target, natural)]}
        return self.result(target, metrics, start, before)


@register("defenses", "generation-cap", family="limit")
class GenerationCap(Defense):
    """A generation cap (`max_new_tokens`) re-measured against over-generation prompts, with the natural replies it
    truncates (OWASP LLM10:2025 Unbounded Consumption; over-generation baselines of Engorgio, Dong et al., 2024).

    The attack (`library`: its prompts, default the built-in over-generation prompts) runs once against the
    unmitigated cap `base_cap` and once against `cap`; for each, tokens per request (attack and natural) and the
    fraction of requests that reach the cap.

    Example:
        >>> from bastion.defenses.availability.request_limits import GenerationCap
        >>> result = GenerationCap(cap=32, base_cap=128).run(lm, prompts=["What is 2+2?"])  # doctest: +SKIP
    """

    name = "generation-cap"
    family = "limit"
    threat = "availability"
    requires = Access.LABELS

    def __init__(self, cap: int = 64, *, base_cap: int = 256, mode: str = "chat", library: list[str] | None = None,
                 n_bootstrap: int = 500, seed: int = 0):
        if not 1 <= int(cap) < int(base_cap):
            raise ParameterError(f"cap must be at least 1 and below base_cap ({base_cap}), got {cap}")
        Overgen(mode=mode, max_new_tokens=int(base_cap), library=library)  # validates mode, base_cap, library
        self.cap, self.base_cap, self.mode = int(cap), int(base_cap), mode
        self.library = list(library) if library is not None else None
        self.n_bootstrap, self.seed = int(n_bootstrap), int(seed)

    def run(self, target: Any, data: Dataset | None = None, *, prompts: list[str] | None = None,
            **datasets: Dataset) -> Result:
        if not prompts:
            raise ParameterError("generation-cap needs natural prompts")
        start = time.perf_counter()
        lm = as_lm_target(target)
        attack_prompts = Overgen(mode=self.mode, library=self.library).craft(lm, list(prompts))
        rows = {}
        for key, cap in (("before", self.base_cap), ("after", self.cap)):
            nat, att = paired_stats(lm, list(prompts), attack_prompts, self.mode, cap)
            rows[key] = {"max_new_tokens": cap, "natural_tokens": float(nat["tokens"].mean()),
                         "attack_tokens": float(att["tokens"].mean()),
                         "attack_capped": float(att["capped"].mean()), "natural_capped": float(nat["capped"].mean()),
                         "natural_ms": float(nat["seconds"].mean() * 1e3),
                         "attack_ms": float(att["seconds"].mean() * 1e3),
                         "tokens_ratio": measure.ratio(att["tokens"], np.maximum(nat["tokens"], 1e-9),
                                                       self.n_bootstrap, self.seed)}
        lost = rows["before"]["natural_tokens"] - rows["after"]["natural_tokens"]
        metrics = {"mitigation": "generation-cap", "attack": "overgen", "n": len(prompts), **rows,
                   "natural_truncated": rows["after"]["natural_capped"], "natural_tokens_lost": lost}
        return Result(family=self.threat, attack=self.name, params=self.get_params(), metrics=metrics,
                      queries=lm.queries, seconds=time.perf_counter() - start, device=lm.describe()["backend"])


@register("defenses", "generation-deadline", family="limit")
class GenerationDeadline(Defense):
    """An enforced per-request deadline on generation, re-measured against over-generation prompts, with the natural
    replies it cuts (OWASP LLM10:2025 Unbounded Consumption; over-generation baselines of Engorgio, Dong et al.,
    2024; "bound the time of every request", Shumailov et al., EuroS&P 2021).

    The target stops generating when `deadline_s` passes (`LMTarget.deadline_s`, enforced after every token by the
    local backend; None: `deadline_x` × the natural p99 seconds measured first without it). The attack runs once
    without the deadline and once with it; for each: seconds and tokens per request, attack and natural, and the
    requests the deadline cut. An attacker who knows the deadline can at best make every request last until it:
    `worst_case_bound` (deadline over the natural mean) is that adaptive attacker's ratio; `overrun_ms` is how far
    past the deadline the slowest request still ran (the prompt's prefill and one token are not interrupted).
    `select` is over-generation's adaptive step (`Overgen(select=K)`: the K library prompts that drew most tokens).

    Example:
        >>> from bastion.defenses.availability.request_limits import GenerationDeadline
        >>> result = GenerationDeadline(deadline_s=2.0).run(lm, prompts=["What is 2+2?"])  # doctest: +SKIP
    """

    name = "generation-deadline"
    family = "limit"
    threat = "availability"
    requires = Access.LABELS

    def __init__(self, deadline_s: float | None = None, *, deadline_x: float = 2.0, max_new_tokens: int = 256,
                 mode: str = "chat", library: list[str] | None = None, select: int = 0, n_bootstrap: int = 500,
                 seed: int = 0):
        if deadline_s is not None and not (math.isfinite(deadline_s) and 0 < deadline_s < 86_400):
            raise ParameterError(f"deadline_s must be a positive number of seconds (or unset), got {deadline_s}")
        if not (math.isfinite(deadline_x) and deadline_x >= 1):
            raise ParameterError(f"deadline_x must be at least 1, got {deadline_x}")
        Overgen(mode=mode, max_new_tokens=int(max_new_tokens), library=library, select=select)  # validates them
        self.deadline_s, self.deadline_x, self.select = deadline_s, float(deadline_x), int(select)
        self.max_new_tokens, self.mode = int(max_new_tokens), mode
        self.library = list(library) if library is not None else None
        self.n_bootstrap, self.seed = int(n_bootstrap), int(seed)

    def _row(self, nat: dict[str, np.ndarray], att: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"natural_ms": measure.percentiles_ms(nat["seconds"] * 1e3),
                "attack_ms": measure.percentiles_ms(att["seconds"] * 1e3),
                "natural_tokens": float(nat["tokens"].mean()), "attack_tokens": float(att["tokens"].mean()),
                "attack_cut": float(att["cut"].mean()), "natural_cut": float(nat["cut"].mean()),
                "seconds_ratio": measure.ratio(att["seconds"], np.maximum(nat["seconds"], 1e-9), self.n_bootstrap,
                                               self.seed)}

    def run(self, target: Any, data: Dataset | None = None, *, prompts: list[str] | None = None,
            **datasets: Dataset) -> Result:
        if not prompts:
            raise ParameterError("generation-deadline needs natural prompts")
        start, lm = time.perf_counter(), as_lm_target(target)
        if not lm.enforces_deadline:
            raise ParameterError(f"{lm.spec}: this target cannot stop a generation at a deadline (an endpoint's "
                                 "server must); measure it on the model file, or put it behind bastion guard")
        kept, lm.deadline_s = lm.deadline_s, None
        try:
            attack_prompts = Overgen(mode=self.mode, library=self.library, select=self.select,
                                     max_new_tokens=self.max_new_tokens).craft(lm, list(prompts))
            before = paired_stats(lm, list(prompts), attack_prompts, self.mode, self.max_new_tokens)
            deadline = float(self.deadline_s or self.deadline_x * np.percentile(before[0]["seconds"], 99))
            lm.deadline_s = deadline
            after = paired_stats(lm, list(prompts), attack_prompts, self.mode, self.max_new_tokens)
        finally:
            lm.deadline_s = kept
        rows = {"before": self._row(*before), "after": self._row(*after)}
        nat_after = after[0]["seconds"]
        metrics = {"mitigation": "generation-deadline", "attack": "overgen", "n": len(prompts), "deadline_s": deadline,
                   "enforced": True, "max_new_tokens": self.max_new_tokens, **rows,
                   "natural_cut": rows["after"]["natural_cut"],
                   "natural_tokens_lost": rows["before"]["natural_tokens"] - rows["after"]["natural_tokens"],
                   "worst_case_bound": deadline / max(float(nat_after.mean()), 1e-9),
                   "overrun_ms": max(0.0, float(np.max(np.concatenate([after[1]["seconds"], nat_after]))) - deadline)
                   * 1e3}
        return Result(family=self.threat, attack=self.name, params=self.get_params(), metrics=metrics,
                      queries=lm.queries, seconds=time.perf_counter() - start, device=lm.describe()["backend"])
