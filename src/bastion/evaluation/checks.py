"""The ten sanity checks of a robustness evaluation (THREATS.md §1), each judged into a `Check`.

A failed check means the robust accuracy may be too optimistic (gradient masking, randomness, a broken attack);
the evasion family judges it into a Finding (`families.evasion.check_finding`) and `auto` escalates. Checks 1-3
probe the target before attacking; the others judge what the attacks measured (the measurements themselves are
made by `bastion.attacks.evasion.auto`).

 1. inputs inside bounds, model in eval mode, outputs are logits (not probabilities);
 2. deterministic forward pass, no autograd call and no cut graph inside `forward`;
 3. no zero (or non-finite) input gradients at the clean points;
 4. every adversarial example within eps, finite and inside the bounds (float32);
 5. the iterative attack beats single-step FGSM on every sample;
 6. robust accuracy non-increasing in eps, and down to chance at a very large eps;
 7. an unbounded attack succeeds on every sample;
 8. doubling the iterations changes robust accuracy by less than a tolerance;
 9. no black-box, transfer or random-noise attack beats the white-box attacks on any sample;
10. DLR losses only with ≥ 3 classes (targeted DLR ≥ 4).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from bastion.core.gradients import loss_and_grad
from bastion.core.target import Access, Target, TorchTarget

NAMES = {
    1: "inputs in bounds, eval mode, logit outputs",
    2: "deterministic forward pass without autograd",
    3: "no zero input gradients",
    4: "examples within eps and bounds",
    5: "iterative attack beats single-step",
    6: "robust accuracy monotone, chance at large eps",
    7: "unbounded attack always succeeds",
    8: "converged: more iterations change little",
    9: "white-box beats black-box, transfer and noise",
    10: "DLR only with enough classes",
}
SEVERITY = {1: "medium", 2: "medium", 3: "high", 4: "high", 5: "high", 6: "high", 7: "high", 8: "medium",
            9: "high", 10: "medium"}


@dataclass
class Check:
    """The verdict of one sanity check."""

    id: int
    passed: bool
    detail: str
    value: float | None = None
    threshold: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    severity: str | None = None  # overrides the check's default severity

    @property
    def name(self) -> str:
        return NAMES[self.id]

    def summary(self) -> dict[str, Any]:
        """What the check measured, as data (the evasion family judges a failed check into a finding)."""
        return {"id": self.id, "check": self.name, "passed": self.passed, "detail": self.detail,
                "severity": self.severity or SEVERITY[self.id], "value": self.value, "threshold": self.threshold,
                "evidence": self.evidence}


# -- checks 1-3: probing the target ------------------------------------------------------------------------
def check_setup(target: Target, x: torch.Tensor) -> Check:
    """Check 1: data inside the declared bounds, a PyTorch model in eval mode, outputs that are not
    probabilities (rows of non-negative values summing to 1 make losses saturate)."""
    lo, hi = target.bounds
    problems: list[str] = []
    outside = int(((x < lo - 1e-6) | (x > hi + 1e-6)).flatten(1).any(dim=1).sum())
    if outside:
        problems.append(f"{outside} inputs outside the bounds [{lo:g}, {hi:g}]")
    if isinstance(target, TorchTarget) and any(m.training for m in target.model.modules()):
        problems.append("the model is in training mode")
    probabilities = False
    if target.access >= Access.SCORES and target.output_kind == "logits":
        with torch.no_grad():
            out = target.logits(x[:64])
        probabilities = bool((out >= 0).all() and torch.allclose(out.sum(1), torch.ones(len(out), device=out.device),
                                                                 atol=1e-4))
        if probabilities:
            problems.append("the model outputs probabilities, not logits (softmax inside the model)")
    return Check(1, not problems, "; ".join(problems) or "ok", evidence={"outside": outside,
                                                                         "probability_outputs": probabilities})


@contextlib.contextmanager
def _count_autograd() -> Iterator[list[int]]:
    """Count calls of torch.autograd.grad / backward made while the block runs (e.g. inside a model's forward)."""
    calls = [0]
    grad, backward = torch.autograd.grad, torch.autograd.backward

    def counted_grad(*a: Any, **k: Any) -> Any:
        calls[0] += 1
        return grad(*a, **k)

    def counted_backward(*a: Any, **k: Any) -> Any:
        calls[0] += 1
        return backward(*a, **k)

    torch.autograd.grad, torch.autograd.backward = counted_grad, counted_backward
    try:
        yield calls
    finally:
        torch.autograd.grad, torch.autograd.backward = grad, backward


def check_forward(target: Target, x: torch.Tensor) -> Check:
    """Check 2: two forward passes agree (else the model is random: use EOT); the forward pass neither calls
    autograd itself nor cuts the graph between input and output."""
    x = x[:64]
    if target.access < Access.SCORES:
        a, b = target.labels(x), target.labels(x)
        random = bool((a != b).any())
        return Check(2, not random, "labels change between identical queries" if random else "ok",
                     evidence={"random": random})
    with torch.no_grad():
        a, b = target.logits(x), target.logits(x)
    random = not torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    problems = ["outputs change between identical forward passes (randomised model)"] if random else []
    autograd_calls, cut = 0, False
    if target.access >= Access.GRADIENTS:
        xg = x.detach().clone().requires_grad_(True)
        with torch.enable_grad(), _count_autograd() as calls:
            out = target.logits(xg)
        autograd_calls, cut = calls[0], not out.requires_grad
        if autograd_calls:
            problems.append(f"the forward pass calls autograd {autograd_calls} times")
        if cut:
            problems.append("the output does not depend differentiably on the input (detach or no_grad inside)")
    return Check(2, not problems, "; ".join(problems) or "ok",
                 evidence={"random": random, "autograd_calls": autograd_calls, "graph_cut": cut})


def check_gradients(target: Target, x: torch.Tensor, y: torch.Tensor) -> Check:
    """Check 3: the fraction of correctly classified points whose loss gradient is all zero or non-finite."""
    if target.access < Access.GRADIENTS:
        return Check(3, True, "no gradient access: not applicable")
    _, grad, logits = loss_and_grad(target, x, y)
    correct = logits.argmax(1) == y
    flat = grad[correct].flatten(1)
    bad = (flat.abs().amax(dim=1) == 0) | ~torch.isfinite(flat).all(dim=1)
    share = float(bad.float().mean()) if len(flat) else 0.0
    return Check(3, share == 0.0, f"{share:.1%} of the points have a zero or non-finite input gradient"
                 if share else "ok", value=share, threshold=0.0)


# -- checks 4-10: judging measurements ---------------------------------------------------------------------
def check_constraints(violations: int) -> Check:
    """Check 4: examples outside the eps ball or the bounds, or not finite (they were not counted)."""
    return Check(4, violations == 0, f"{violations} adversarial examples broke the norm or input bounds"
                 if violations else "ok", value=float(violations), threshold=0.0)


def check_single_step(beaten: int, n: int) -> Check:
    """Check 5: samples that FGSM broke but the iterative attacks did not."""
    return Check(5, beaten == 0, f"FGSM broke {beaten} of {n} samples the iterative attacks missed" if beaten
                 else "ok", value=float(beaten), threshold=0.0)


def check_monotone(curve: list[dict], large_eps: float, large_accuracy: float, chance: float,
                   tolerance: float = 0.05) -> Check:
    """Check 6: robust accuracy never rises with eps, and falls to chance (+ tolerance) at a very large eps."""
    values = [c["robust_accuracy"] for c in curve]
    rises = [curve[i + 1]["eps"] for i in range(len(values) - 1) if values[i + 1] > values[i] + 1e-9]
    problems = []
    if rises:
        problems.append(f"robust accuracy rises with eps at {rises}")
    if large_accuracy > chance + tolerance:
        problems.append(f"robust accuracy {large_accuracy:.1%} at eps {large_eps:g} is above chance {chance:.1%}")
    return Check(6, not problems, "; ".join(problems) or "ok", value=large_accuracy, threshold=chance + tolerance,
                 evidence={"large_eps": large_eps})


def check_unbounded(success_rate: float, n: int) -> Check:
    """Check 7: an attack without a norm bound must fool every sample."""
    return Check(7, success_rate >= 1.0, f"an unbounded attack fooled only {success_rate:.1%} of {n} samples"
                 if success_rate < 1.0 else "ok", value=success_rate, threshold=1.0)


def check_convergence(before: float, after: float, n: int, tolerance: float = 0.05) -> Check:
    """Check 8: robust accuracy of a subsample with twice the iterations drops by less than `tolerance`."""
    drop = before - after
    return Check(8, drop < tolerance, f"twice the iterations lowered robust accuracy by {drop:.1%} on {n} samples"
                 if drop >= tolerance else "ok", value=drop, threshold=tolerance)


def check_black_box(beaten: dict[str, int], n: int, masking_share: float = 0.01) -> Check:
    """Check 9: samples that a black-box, transfer or noise attack broke after the white-box attacks failed.

    Any such sample fails the check; more than `masking_share` of the n samples is taken as a sign of gradient
    masking (severity high), fewer as an optimisation miss of the white-box attacks (severity low)."""
    total = sum(beaten.values())
    detail = ", ".join(f"{name} broke {k}" for name, k in beaten.items() if k)
    masking = total > masking_share * n
    return Check(9, total == 0, f"{detail} of {n} samples the white-box attacks missed" if total else "ok",
                 value=float(total), threshold=0.0, evidence={"beaten": dict(beaten), "masking": masking},
                 severity=None if masking else "low")


def check_dlr(n_classes: int, untargeted: bool, targeted: bool) -> Check:
    """Check 10: the DLR loss needs 3 classes, its targeted form 4."""
    problems = []
    if untargeted and n_classes < 3:
        problems.append(f"DLR used with {n_classes} classes (needs 3)")
    if targeted and n_classes < 4:
        problems.append(f"targeted DLR used with {n_classes} classes (needs 4)")
    return Check(10, not problems, "; ".join(problems) or "ok", evidence={"n_classes": n_classes})
