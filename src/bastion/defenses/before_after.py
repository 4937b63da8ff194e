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
naive robustness vanishes under the adaptive attack is reported as gradient masking: a Finding, never a gain.
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
from bastion.core.results import Finding
from bastion.core.target import Access, Target, TorchTarget
from bastion.defenses.preprocess.transforms import has_transforms, straight_through
from bastion.evaluation.scoring import EVASION_ATLAS, EVASION_OWASP

MASKING_TOLERANCE = 0.1  # a naive robust accuracy this much above the adaptive one is gradient masking
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
            naive: bool = True, attack_params: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[Finding]]:
    """Clean accuracy cost and robust accuracy gain of `after` over `before` on `data`, attacked alike.

    Returns the metrics (`clean_accuracy_before/after`, `clean_accuracy_cost`, `robust_accuracy_before/after`
    per eps, `robust_accuracy_gain` per eps, `evaluation`, and `robust_accuracy_after_naive` when the defended
    model needed an adaptive attack) and findings about the defense."""
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
                       "n_samples": len(data), "queries": base["queries"] + hard["queries"]},
    }
    findings = [gain_finding(what, metrics, norm)]
    if hard["naive"] is not None:
        metrics["robust_accuracy_after_naive"] = hard["naive"]
        masking = masking_finding(what, metrics, hard["adaptive"])
        if masking is not None:
            findings.append(masking)
    return metrics, findings


def clean_comparison(before: Target, after: Target, data: Dataset) -> tuple[dict[str, Any], list[Finding]]:
    """Clean accuracy before and after, when no robustness evaluation was asked for (`eps` none)."""
    y = torch.as_tensor(data.y, device=before.device)
    acc_before = float((before.labels(data.x) == y).float().mean())
    acc_after = float((after.labels(data.x) == y).float().mean())
    return {"clean_accuracy_before": acc_before, "clean_accuracy_after": acc_after,
            "clean_accuracy_cost": acc_before - acc_after}, []


def gain_finding(what: str, metrics: dict[str, Any], norm: str) -> Finding:
    """The headline: robust accuracy gain at the largest epsilon and the clean accuracy it cost."""
    last_gain = metrics["robust_accuracy_gain"][-1]
    before, after = metrics["robust_accuracy_before"][-1], metrics["robust_accuracy_after"][-1]
    cost = metrics["clean_accuracy_cost"]
    robust = last_gain["gain"] >= 0.05
    severity = "info" if robust and cost < 0.05 else "low" if robust else "medium"
    if (metrics.get("evaluation") or {}).get("after") == "certificate":
        return _certified_gain_finding(what, metrics, norm, robust, cost)
    return Finding(
        title=(f"{what}: robust accuracy {before['robust_accuracy']:.1%} -> {after['robust_accuracy']:.1%} at "
               f"{norm} eps={last_gain['eps']:g}, clean accuracy cost {cost:+.1%}"),
        family="evasion",
        severity=severity,  # type: ignore[arg-type]
        metric="robust_accuracy_gain",
        value=last_gain["gain"],
        threshold=0.05,
        evidence={k: metrics[k] for k in ("clean_accuracy_before", "clean_accuracy_after", "robust_accuracy_before",
                                          "robust_accuracy_after", "evaluation")},
        atlas=EVASION_ATLAS,
        owasp=EVASION_OWASP,
        description=("Measured by attacking the model before and after the defense with the same adaptive attack."
                     if robust else "The defense gives no meaningful robustness under adaptive attack."),
        recommendation="" if robust else "Use adversarial training or randomized smoothing for robustness.",
    )


def _certified_gain_finding(what: str, metrics: dict[str, Any], norm: str, robust: bool, cost: float) -> Finding:
    """The gain when the defended model is judged by its certificate: the certified accuracy is a lower bound and
    the attack on the original an upper bound, so their difference bounds the gain from below and is never read
    as a loss."""
    gain = metrics["robust_accuracy_gain"][-1]
    before, after = metrics["robust_accuracy_before"][-1], metrics["robust_accuracy_after"][-1]
    title = (f"{what}: certified robust accuracy (a lower bound) {after['robust_accuracy']:.1%} at {norm} "
             f"eps={gain['eps']:g}, against at most {before['robust_accuracy']:.1%} before (an attack's upper "
             f"bound): gain at least {gain['gain']:+.1%}, clean accuracy cost {cost:+.1%}")
    return Finding(
        title=title, family="evasion", severity="info" if robust and cost < 0.05 else "low",
        metric="robust_accuracy_gain_lower_bound", value=gain["gain"], threshold=0.05,
        evidence={k: metrics[k] for k in ("clean_accuracy_before", "clean_accuracy_after", "robust_accuracy_before",
                                          "robust_accuracy_after", "evaluation")},
        atlas=EVASION_ATLAS, owasp=EVASION_OWASP,
        description=("A certified lower bound compared with an attack's upper bound: the true gain is at least "
                     "this much." if robust else "A certified lower bound compared with an attack's upper bound: "
                     "inconclusive (not a measured loss); attack the smoothed model (attack_smoothed) for a "
                     "like-for-like figure."),
    )


def masking_finding(what: str, metrics: dict[str, Any], used: str) -> Finding | None:
    """A Finding when the naive attack reports much more robustness than the adaptive one (gradient masking)."""
    naive, adaptive = metrics["robust_accuracy_after_naive"], metrics["robust_accuracy_after"]
    gaps = [n["robust_accuracy"] - a["robust_accuracy"] for n, a in zip(naive, adaptive, strict=True)]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    if gaps[worst] < MASKING_TOLERANCE:
        return None
    eps = naive[worst]["eps"]
    return Finding(
        title=(f"{what} masks gradients: robust accuracy {naive[worst]['robust_accuracy']:.1%} under a naive attack "
               f"but {adaptive[worst]['robust_accuracy']:.1%} under {used.upper()} at eps={eps:g}"),
        family="evasion",
        severity="high",
        metric="masked_robust_accuracy",
        value=gaps[worst],
        threshold=MASKING_TOLERANCE,
        evidence={"naive": naive, "adaptive": adaptive, "adaptive_method": used},
        atlas=EVASION_ATLAS,
        owasp=EVASION_OWASP,
        description="The defense only hides the gradient; an adaptive attacker breaks it (Athalye et al. 2018).",
        recommendation="Do not count this defense as robustness; use adversarial training or certification.",
    )
