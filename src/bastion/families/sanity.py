"""Result-level sanity checks of an evasion evaluation (THREATS.md §1): a failed check is a Finding saying the
robust accuracy may be too optimistic, with what to do next.

Checks over the merged robustness curves of every attack:
- every adversarial example within epsilon and the input bounds (no constraint violations);
- robust accuracy non-increasing in epsilon;
- the iterative attack at least as strong as the single-step one;
- doubling the iterations changes robust accuracy by less than a tolerance (convergence);
- a very large epsilon drives accuracy to chance or below;
- no black-box attack beats the white-box ones;
- minimum-norm attacks succeed on every sample when unbounded.
"""

from __future__ import annotations

from typing import Any

from bastion.core.results import Finding
from bastion.evaluation.scoring import EVASION_ATLAS, EVASION_OWASP
from bastion.families.base import SanityCheck

Curve = dict[str, Any]  # {"clean": float, "curve": [{"eps", "robust_accuracy"}], "n": int, "violations": int}


def _tol(n: int) -> float:
    """Tolerance of aggregate comparisons: two samples or 1%, whichever is larger."""
    return max(0.01, 2.0 / max(n, 1)) + 1e-9


def _by_eps(curve: Curve) -> dict[float, float]:
    return {round(c["eps"], 12): c["robust_accuracy"] for c in curve["curve"]}


def check_violations(curves: dict[str, Curve]) -> SanityCheck:
    bad = {a: c["violations"] for a, c in curves.items() if c.get("violations")}
    detail = ("every adversarial example lies within epsilon and the input bounds" if not bad else
              "invalid examples from " + ", ".join(f"{a} ({v})" for a, v in bad.items()))
    return SanityCheck("constraints", not bad, detail)


def check_monotone(curves: dict[str, Curve]) -> SanityCheck:
    bad = []
    for attack, c in curves.items():
        values = [p["robust_accuracy"] for p in sorted(c["curve"], key=lambda p: p["eps"])]
        if any(b > a + 1e-9 for a, b in zip(values, values[1:], strict=False)):
            bad.append(attack)
    detail = ("robust accuracy never rises with epsilon" if not bad else
              f"robust accuracy rises with epsilon for {', '.join(bad)}: the attack is not finding examples "
              "it should (gradient masking or too few steps)")
    return SanityCheck("monotone-in-eps", not bad, detail)


def check_iterative(curves: dict[str, Curve], single: str = "fgsm", iterative: str = "pgd") -> SanityCheck | None:
    if single not in curves or iterative not in curves:
        return None
    one, many = _by_eps(curves[single]), _by_eps(curves[iterative])
    tol = _tol(curves[iterative]["n"])
    bad = [e for e in many if e in one and many[e] > one[e] + tol]
    detail = (f"{iterative} is at least as strong as {single} at every epsilon" if not bad else
              f"{single} beats {iterative} at eps {', '.join(f'{e:g}' for e in bad)}: the iterative attack is "
              "failing (masked or noisy gradients; try more restarts, EOT or BPDA)")
    return SanityCheck("iterative-beats-single-step", not bad, detail)


def check_convergence(base: Curve | None, doubled: Curve | None) -> SanityCheck | None:
    if base is None or doubled is None:
        return None
    a, b = _by_eps(base), _by_eps(doubled)
    tol = _tol(base["n"])
    gaps = {e: a[e] - b[e] for e in a if e in b}
    bad = {e: g for e, g in gaps.items() if abs(g) > tol}
    detail = (f"doubling PGD's steps moves robust accuracy by at most {max(map(abs, gaps.values()), default=0):.1%}"
              if not bad else "doubling PGD's steps lowers robust accuracy by "
              + ", ".join(f"{g:.1%} at eps {e:g}" for e, g in bad.items()) + ": the attack has not converged")
    return SanityCheck("converged", not bad, detail)


def check_large_eps(large: Curve | None, n_classes: int) -> SanityCheck | None:
    if large is None or not large["curve"]:
        return None
    point = large["curve"][-1]
    chance = 1.0 / n_classes
    ok = point["robust_accuracy"] <= chance + _tol(large["n"])
    detail = (f"at eps {point['eps']:g} robust accuracy falls to {point['robust_accuracy']:.1%} "
              f"(chance {chance:.1%})")
    if not ok:
        detail += ": a very large perturbation should break the model; gradients may be masked"
    return SanityCheck("large-eps-reaches-chance", ok, detail)


def check_black_box(curves: dict[str, Curve], white_box: set[str]) -> SanityCheck | None:
    wb = [curves[a] for a in curves if a in white_box]
    bb = {a: c for a, c in curves.items() if a not in white_box}
    if not wb or not bb:
        return None
    best: dict[float, float] = {}
    for c in wb:
        for e, r in _by_eps(c).items():
            best[e] = min(best.get(e, 1.0), r)
    bad = []
    for attack, c in bb.items():
        tol = _tol(c["n"])
        bad += [f"{attack} at eps {e:g}" for e, r in _by_eps(c).items() if e in best and r < best[e] - tol]
    detail = ("no black-box attack beats the white-box ones" if not bad else
              f"black-box attacks beat white-box ones ({', '.join(bad)}): gradients are masked or obfuscated")
    return SanityCheck("black-box-not-stronger", not bad, detail)


def check_unbounded(results_metrics: dict[str, dict[str, Any]]) -> SanityCheck | None:
    rates = {a: m["unbounded_success_rate"] for a, m in results_metrics.items() if "unbounded_success_rate" in m}
    if not rates:
        return None
    bad = {a: r for a, r in rates.items() if r < 1.0 - 1e-9}
    detail = ("unbounded minimum-norm attacks succeed on every sample" if not bad else
              "unbounded attacks fail on some samples: " + ", ".join(f"{a} {r:.1%}" for a, r in bad.items()))
    return SanityCheck("unbounded-succeeds", not bad, detail)


def sanity_finding(check: SanityCheck) -> Finding:
    """The Finding of a failed check: the family's numbers may be too optimistic."""
    if check.name == "constraints":  # invalid examples are Bastion's numerics, not the model's weakness
        from bastion.evaluation.scoring import evaluation_note

        return evaluation_note(f"evaluation note: sanity check '{check.name}': {check.detail}",
                               metric=f"sanity:{check.name}", value=0.0, evidence={"check": check.name},
                               description="Invalid examples were discarded; robust accuracy may be slightly "
                                           "overestimated. This is not a weakness of the model.")
    return Finding(
        title=f"sanity check '{check.name}' failed: robust accuracy may be overestimated",
        family="evasion",
        severity="medium",
        metric=f"sanity:{check.name}",
        evidence={"check": check.name, "detail": check.detail},
        atlas=list(EVASION_ATLAS),
        owasp=list(EVASION_OWASP),
        description=check.detail,
        recommendation="Escalate the evaluation: more steps and restarts, the `auto` ensemble, EOT for "
                       "randomness and BPDA for non-differentiable pre-processing.",
    )
