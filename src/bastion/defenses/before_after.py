"""Before/after evaluation of a defense: clean accuracy cost and robust accuracy gain under adaptive attack.

Every hardening defense calls `compare(before, after, data, eps, ...)`. Both models are attacked by the same
attack (`auto` by default, which checks itself and escalates to EOT for randomness and BPDA for vanishing
gradients), and the defended one adaptively:

- BPDA (Athalye, Carlini & Wagner, ICML 2018) through the defense's own non-differentiable parts: input
  transforms, output hardening and smoothing votes switch to their straight-through forms
  (`preprocess.transforms.straight_through`): the same decisions, a useful gradient;
- EOT (Athalye et al., ICML 2018) through randomness: `auto` does it itself; any other attack is given the mean
  prediction over `eot_samples` draws (`attacks.evasion.wrappers.EOTTarget`).

A defended model that needs either is also attacked naively (a plain PGD on the model as it is: what a
non-adaptive evaluation would report). A sample counts as robust only if no attack broke it, and a defense whose
naive robustness vanishes under the adaptive attack is judged gradient masking, never a gain
(`bastion.families.defense_verdicts`: defenses only measure).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from bastion.attacks.evasion.wrappers import EOTTarget
from bastion.core import registry
from bastion.core.data import Dataset
from bastion.core.target import Access, Target, TorchTarget
from bastion.defenses.preprocess.transforms import has_transforms, straight_through

NAIVE_PGD = {"steps": 50, "restarts": 1}
SELF_ADAPTIVE = ("auto",)  # attacks that detect randomness and apply EOT themselves


def make_attack(name: str, eps: float | Sequence[float], norm: str, seed: int,
                params: dict[str, Any] | None = None) -> Any:
    """The registered evasion attack `name`, given the parameters its constructor accepts."""
    cls = registry.get("attacks", name, "evasion")
    accepted = inspect.signature(cls.__init__).parameters
    values = {"eps": list(eps) if isinstance(eps, Sequence) else eps, "norm": norm, "seed": seed, **(params or {})}
    return cls(**{k: v for k, v in values.items() if k in accepted})


def is_random(model: nn.Module, x: torch.Tensor) -> bool:
    """True when two forward passes on the same inputs disagree (a randomized defense)."""
    with torch.no_grad():
        return not torch.equal(model(x), model(x))


def per_sample(attack: Any, target: Target, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `attack`; per sample: correctly classified (n,) and robust at each eps (n, k), from the outcomes every
    evasion Result carries (`result.samples`)."""
    samples = attack.run(target, data).samples
    correct = torch.as_tensor(samples["correct"], dtype=torch.bool)
    robust = torch.as_tensor(samples["robust"], dtype=torch.bool).reshape(len(correct), len(samples["eps"]))
    return correct, robust


def _curve(eps: Sequence[float], robust: torch.Tensor) -> list[dict[str, float]]:
    return [{"eps": float(e), "robust_accuracy": float(r)}
            for e, r in zip(eps, robust.float().mean(0).tolist(), strict=True)]


def evaluate(target: Target, data: Dataset, eps: float | Sequence[float], norm: str = "linf",
             attack: str = "auto", eot_samples: int = 10, seed: int = 0, naive: bool = True,
             attack_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Attack `target` on `data` adaptively (and naively too, with `naive`, when the model needs adaptivity).

    Returns `clean_accuracy`, `robust_accuracy` (per eps: samples that no attack broke), `naive` (the naive
    curve or None), `adaptive` ("none", "bpda", "eot" or "bpda+eot"), `attack` and `queries`."""
    runner = make_attack(attack, eps, norm, seed, attack_params)
    queries = target.queries
    white = isinstance(target, TorchTarget) and target.access >= Access.GRADIENTS
    bpda = white and has_transforms(target.model)
    random = white and is_random(target.model, torch.as_tensor(data.x[:8], device=target.device))
    eot = random and runner.name not in SELF_ADAPTIVE
    view: Target = EOTTarget(target, eot_samples) if eot else target
    with straight_through(target.model) if bpda else nullcontext():
        correct, robust = per_sample(runner, view, data)
    adaptive = "+".join(name for name, on in (("bpda", bpda), ("eot", random)) if on) or "none"
    naive_curve = None
    if naive and adaptive != "none":
        plain = make_attack("pgd", eps, norm, seed, NAIVE_PGD)
        ok, rob = per_sample(plain, target, data)
        naive_curve = _curve(runner.eps, rob)
        correct, robust = correct & ok, robust & rob
    return {"clean_accuracy": float(correct.float().mean()), "robust_accuracy": _curve(runner.eps, robust),
            "naive": naive_curve, "adaptive": adaptive, "attack": runner.name, "queries": target.queries - queries}


def compare(before: Target, after: Target, data: Dataset, eps: float | Sequence[float], norm: str = "linf",
            attack: str = "auto", eot_samples: int = 10, seed: int = 0, what: str = "the defense",
            naive: bool = True, attack_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Clean accuracy cost and robust accuracy gain of `after` over `before` on `data`, attacked alike.

    Returns the metrics (`clean_accuracy_before/after`, `clean_accuracy_cost`, `robust_accuracy_before/after`
    per eps, `robust_accuracy_gain` per eps, `evaluation`, and `robust_accuracy_after_naive` when the defended
    model needed an adaptive attack); `evaluation.defense` is `what`, the name the verdicts give the defense."""
    base = evaluate(before, data, eps, norm, attack, eot_samples, seed, naive, attack_params)
    hard = evaluate(after, data, eps, norm, attack, eot_samples, seed, naive, attack_params)
    gain = [{"eps": a["eps"], "gain": a["robust_accuracy"] - b["robust_accuracy"]}
            for a, b in zip(hard["robust_accuracy"], base["robust_accuracy"], strict=True)]
    metrics: dict[str, Any] = {
        "clean_accuracy_before": base["clean_accuracy"],
        "clean_accuracy_after": hard["clean_accuracy"],
        "clean_accuracy_cost": base["clean_accuracy"] - hard["clean_accuracy"],
        "robust_accuracy_before": base["robust_accuracy"],
        "robust_accuracy_after": hard["robust_accuracy"],
        "robust_accuracy_gain": gain,
        "evaluation": {"attack": hard["attack"], "adaptive": hard["adaptive"], "norm": norm,
                       "n_samples": len(data), "queries": base["queries"] + hard["queries"], "defense": what},
    }
    if hard["naive"] is not None:
        metrics["robust_accuracy_after_naive"] = hard["naive"]
    return metrics


def clean_comparison(before: Target, after: Target, data: Dataset) -> dict[str, Any]:
    """Clean accuracy before and after, when no robustness evaluation was asked for (`eps` none)."""
    y = torch.as_tensor(data.y, device=before.device)
    acc_before = float((before.labels(data.x) == y).float().mean())
    acc_after = float((after.labels(data.x) == y).float().mean())
    return {"clean_accuracy_before": acc_before, "clean_accuracy_after": acc_after,
            "clean_accuracy_cost": acc_before - acc_after}
