"""Before/after evaluation of a defense: clean accuracy cost and robust accuracy gain under adaptive attack.

Every hardening defense calls `compare(before, after, data, eps, ...)`. Both models are attacked with the same
attack (the `auto` ensemble when it is registered, a strong PGD otherwise), and the defended one adaptively:

- BPDA (Athalye, Carlini & Wagner, ICML 2018) through non-differentiable parts: input transforms and output
  rounding back-propagate as the identity (`preprocess.transforms.straight_through`), forward values unchanged;
- EOT (Athalye et al., ICML 2018) through randomness: the attack works on the mean prediction over
  `eot_samples` draws (`attacks.evasion.wrappers.EOTTarget`).

A model that needs either is attacked both ways, plain and adaptive, and a sample counts as robust only when no
way broke it. A defense whose plain-attack robustness vanishes under the adaptive attack is reported as gradient
masking: a Finding, never a robustness claim.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from bastion.attacks.evasion.base import EvasionAttack
from bastion.attacks.evasion.wrappers import EOTTarget
from bastion.core import registry
from bastion.core.data import Dataset
from bastion.core.errors import BastionError
from bastion.core.results import Finding
from bastion.core.target import Access, Target, TorchTarget
from bastion.defenses.preprocess.transforms import has_transforms, straight_through
from bastion.evaluation.scoring import EVASION_ATLAS, EVASION_OWASP

MASKING_TOLERANCE = 0.1  # a naive gain this much above the adaptive gain is gradient masking
FALLBACK_PGD = {"steps": 50, "restarts": 2}


def make_attack(name: str, eps: float | Sequence[float], norm: str, seed: int,
                params: dict[str, Any] | None = None) -> Any:
    """The registered evasion attack `name` built with the parameters it accepts; `auto` falls back to a 50-step,
    2-restart PGD until the ensemble is registered."""
    params = dict(params or {})
    try:
        cls = registry.get("attacks", name, "evasion")
    except BastionError:
        if name != "auto":
            raise
        cls = registry.get("attacks", "pgd", "evasion")
        params = {**FALLBACK_PGD, **params}
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in {"eps": list(eps) if isinstance(eps, Sequence) else eps, "norm": norm,
                                "seed": seed, **params}.items() if k in accepted}
    return cls(**kwargs)


def is_random(model: nn.Module, x: torch.Tensor) -> bool:
    """True when two forward passes on the same inputs disagree (a randomized defense)."""
    with torch.no_grad():
        return not torch.equal(model(x), model(x))


def variants(target: Target, data: Dataset) -> list[str]:
    """The ways to attack `target`: always as it is ("none"), plus BPDA and/or EOT where its model needs them."""
    if not isinstance(target, TorchTarget) or target.access < Access.GRADIENTS:
        return ["none"]
    bpda = has_transforms(target.model)
    eot = is_random(target.model, torch.as_tensor(data.x[:8], device=target.device))
    adaptive = "+".join(name for name, on in (("bpda", bpda), ("eot", eot)) if on)
    return ["none", adaptive] if adaptive else ["none"]


def _robust(attack: Any, target: Target, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: correctly classified (n,) and robust at each eps (n, k). Per-sample answers come from the
    attack's epsilon search when its `run` is the standard one; otherwise every sample shares the curve."""
    if isinstance(attack, EvasionAttack) and type(attack).run is EvasionAttack.run:
        x, y = attack.prepare(target, data)
        search = attack.search(target, x, y)
        return search.correct, torch.stack([search.robust_mask(k) for k in range(search.k)], dim=1)
    result = attack.run(target, data)
    n = len(data)
    correct = torch.full((n,), False)
    correct[: round(float(result.metrics["clean_accuracy"]) * n)] = True
    robust = torch.stack([torch.arange(n) < round(c["robust_accuracy"] * n)
                          for c in result.metrics["robust_accuracy"]], dim=1)
    return correct, robust


def evaluate(target: Target, data: Dataset, eps: float | Sequence[float], norm: str = "linf",
             attack: str = "auto", eot_samples: int = 10, seed: int = 0,
             attack_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Attack `target` on `data` in every variant it needs; a sample counts robust only if no variant broke it.

    Returns `clean_accuracy`, `robust_accuracy` (per eps, the per-sample minimum over variants), `naive` (the
    curve of the plain attack alone), `adaptive` (the variants), `attack` and `queries`."""
    runner = make_attack(attack, eps, norm, seed, attack_params)
    queries = target.queries
    correct, robust, naive = None, None, None
    kinds = variants(target, data)
    for kind in kinds:
        view: Target = EOTTarget(target, eot_samples) if "eot" in kind else target
        context = straight_through(target.model, enabled=True) if "bpda" in kind else nullcontext()
        with context:
            ok, rob = _robust(runner, view, data)
        correct = ok if correct is None else correct & ok.to(correct.device)
        robust = rob if robust is None else robust & rob.to(robust.device)
        if kind == "none":
            naive = rob.float().mean(0)
    eps_list = runner.eps
    return {
        "clean_accuracy": float(correct.float().mean()),
        "robust_accuracy": [{"eps": float(e), "robust_accuracy": float(r)}
                            for e, r in zip(eps_list, robust.float().mean(0).tolist(), strict=True)],
        "naive": [{"eps": float(e), "robust_accuracy": float(r)}
                  for e, r in zip(eps_list, naive.tolist(), strict=True)],
        "adaptive": kinds[-1],
        "attack": runner.name,
        "queries": target.queries - queries,
    }


def compare(before: Target, after: Target, data: Dataset, eps: float | Sequence[float], norm: str = "linf",
            attack: str = "auto", eot_samples: int = 10, seed: int = 0, what: str = "the defense",
            attack_params: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[Finding]]:
    """Clean accuracy cost and robust accuracy gain of `after` over `before` on `data`, attacked alike.

    Returns the metrics (`clean_accuracy_before/after`, `clean_accuracy_cost`, `robust_accuracy_before/after`
    per eps, `robust_accuracy_gain` per eps, `evaluation`, and `robust_accuracy_after_naive` when the defended
    model needed an adaptive attack) and findings about the defense."""
    base = evaluate(before, data, eps, norm, attack, eot_samples, seed, attack_params)
    hard = evaluate(after, data, eps, norm, attack, eot_samples, seed, attack_params)
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
    if hard["adaptive"] != "none":
        metrics["robust_accuracy_after_naive"] = hard["naive"]
        masking = masking_finding(what, metrics, hard["adaptive"])
        if masking is not None:
            findings.append(masking)
    return metrics, findings


def gain_finding(what: str, metrics: dict[str, Any], norm: str) -> Finding:
    """The headline: robust accuracy gain at the largest epsilon and the clean accuracy it cost."""
    last_gain = metrics["robust_accuracy_gain"][-1]
    before, after = metrics["robust_accuracy_before"][-1], metrics["robust_accuracy_after"][-1]
    cost = metrics["clean_accuracy_cost"]
    robust = last_gain["gain"] >= 0.05
    severity = "info" if robust and cost < 0.05 else "low" if robust else "medium"
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
