"""Before/after evaluation of a defense: clean accuracy cost and robust accuracy gain under adaptive attack.

Every hardening defense calls `compare(before, after, data, eps, ...)`. Both models are attacked with the same
attack (the `auto` ensemble when it is registered, a strong PGD otherwise), and the defended one adaptively:

- BPDA (Athalye, Carlini & Wagner, ICML 2018) through non-differentiable parts: input transforms and output
  rounding back-propagate as the identity (`preprocess.transforms.straight_through`), forward values unchanged;
- EOT (Athalye et al., ICML 2018) through randomness: the attack's gradients come from the average prediction
  over `eot_samples` draws, while every adversarial example is judged on the model itself.

When adaptivity changes anything, the defended model is also attacked naively, and a defense whose gain vanishes
under the adaptive attack is reported as gradient masking: a Finding, never a robustness claim.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from bastion.core import registry
from bastion.core.data import Dataset
from bastion.core.errors import BastionError
from bastion.core.results import AttackResult, Finding
from bastion.core.target import Target, TorchTarget
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


class EOTTarget(TorchTarget):
    """A randomized white-box model attacked with Expectation over Transformation.

    Differentiable calls return the log of the mean probabilities over `samples` draws (one batched forward
    pass); evaluation calls (no gradient) see one draw of the model itself, as a deployed model would answer."""

    def __init__(self, base: TorchTarget, samples: int):
        super().__init__(base.model, base.input_shape, base.n_classes, base.bounds, base.device, base.access,
                         None, base.batch_size, f"{base.name} (EOT x{samples})")
        self.counter = base.counter
        self.samples = int(samples)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return super()._forward(x)
        k, n = self.samples, len(x)
        logits = self.model(x.repeat(k, *[1] * (x.dim() - 1)))
        log_probs = logits.log_softmax(-1).view(k, n, -1)
        return log_probs.logsumexp(0) - torch.log(torch.tensor(float(k), device=x.device))


def is_random(model: nn.Module, x: torch.Tensor) -> bool:
    """True when two forward passes on the same inputs disagree (a randomized defense)."""
    with torch.no_grad():
        return not torch.equal(model(x), model(x))


def evaluate(target: Target, data: Dataset, eps: float | Sequence[float], norm: str = "linf",
             attack: str = "auto", adaptive: bool = True, eot_samples: int = 8, seed: int = 0,
             attack_params: dict[str, Any] | None = None) -> tuple[AttackResult, str]:
    """Attack `target` on `data`; with `adaptive`, through BPDA and EOT where the model needs them.

    Returns the attack's result and the adaptations used ("none", "bpda", "eot" or "bpda+eot")."""
    runner = make_attack(attack, eps, norm, seed, attack_params)
    model = target.model if isinstance(target, TorchTarget) else None
    bpda = adaptive and model is not None and has_transforms(model)
    eot = adaptive and model is not None and is_random(model, torch.as_tensor(data.x[:8], device=target.device))
    attacked: Target = EOTTarget(target, eot_samples) if eot else target
    with straight_through(model, enabled=bpda) if model is not None else nullcontext():
        result = runner.run(attacked, data)
    used = "+".join(name for name, on in (("bpda", bpda), ("eot", eot)) if on) or "none"
    return result, used


def _curve(result: AttackResult) -> list[dict[str, float]]:
    return [{"eps": float(c["eps"]), "robust_accuracy": float(c["robust_accuracy"])}
            for c in result.metrics["robust_accuracy"]]


def compare(before: Target, after: Target, data: Dataset, eps: float | Sequence[float], norm: str = "linf",
            attack: str = "auto", eot_samples: int = 8, seed: int = 0, what: str = "the defense",
            attack_params: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[Finding]]:
    """Clean accuracy cost and robust accuracy gain of `after` over `before` on `data`, attacked alike.

    Returns the metrics (`clean_accuracy_before/after`, `clean_accuracy_cost`, `robust_accuracy_before/after`
    per eps, `robust_accuracy_gain` per eps, `evaluation`) and findings about the defense."""
    base, _ = evaluate(before, data, eps, norm, attack, True, eot_samples, seed, attack_params)
    hard, used = evaluate(after, data, eps, norm, attack, True, eot_samples, seed, attack_params)
    clean_before, clean_after = float(base.metrics["clean_accuracy"]), float(hard.metrics["clean_accuracy"])
    curve_before, curve_after = _curve(base), _curve(hard)
    gain = [{"eps": a["eps"], "gain": a["robust_accuracy"] - b["robust_accuracy"]}
            for a, b in zip(curve_after, curve_before, strict=True)]
    metrics: dict[str, Any] = {
        "clean_accuracy_before": clean_before,
        "clean_accuracy_after": clean_after,
        "clean_accuracy_cost": clean_before - clean_after,
        "robust_accuracy_before": curve_before,
        "robust_accuracy_after": curve_after,
        "robust_accuracy_gain": gain,
        "evaluation": {"attack": hard.attack, "adaptive": used, "norm": norm, "n_samples": len(data),
                       "queries": base.queries + hard.queries},
    }
    findings = [gain_finding(what, metrics, norm)]
    if used != "none":
        naive, _ = evaluate(after, data, eps, norm, attack, False, eot_samples, seed, attack_params)
        metrics["robust_accuracy_after_naive"] = _curve(naive)
        masking = masking_finding(what, metrics, used)
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
