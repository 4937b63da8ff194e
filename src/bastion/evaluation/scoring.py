"""Turning measured results into graded Findings, with MITRE ATLAS and OWASP ML Top 10 mappings."""

from __future__ import annotations

from bastion.core.results import Finding

# MITRE ATLAS: AML.T0043 Craft Adversarial Data, AML.T0015 Evade ML Model. OWASP ML Top 10: ML01 Input Manipulation.
EVASION_ATLAS = ["AML.T0043", "AML.T0015"]
EVASION_OWASP = ["ML01:2023 Input Manipulation Attack"]


def severity_from_drop(relative_drop: float) -> str:
    """Severity of a relative loss of accuracy (0 = no loss, 1 = everything lost)."""
    if relative_drop >= 0.9:
        return "critical"
    if relative_drop >= 0.6:
        return "high"
    if relative_drop >= 0.3:
        return "medium"
    if relative_drop >= 0.1:
        return "low"
    return "info"


def evasion_findings(attack: str, norm: str, clean: float, curve: list[dict], violations: int) -> list[Finding]:
    """One finding for the robustness curve (judged at its largest epsilon), one for constraint violations."""
    findings = []
    if curve:
        last = curve[-1]
        drop = (clean - last["robust_accuracy"]) / clean if clean > 0 else 0.0
        findings.append(Finding(
            title=f"{attack} lowers accuracy from {clean:.1%} to {last['robust_accuracy']:.1%} at "
                  f"{norm} eps={last['eps']:g}",
            family="evasion",
            severity=severity_from_drop(drop),  # type: ignore[arg-type]
            metric="robust_accuracy",
            value=last["robust_accuracy"],
            threshold=clean,
            evidence={"attack": attack, "norm": norm, "clean_accuracy": clean, "curve": curve},
            atlas=EVASION_ATLAS,
            owasp=EVASION_OWASP,
            description="Small input perturbations change the model's decisions.",
            recommendation="Harden with adversarial training (PGD-AT or TRADES) and re-assess with `auto`.",
        ))
    if violations:  # about Bastion's evaluation (e.g. float32 rounding of an iterate), never about the model
        findings.append(evaluation_note(
            f"evaluation note: {violations} examples from {attack} left the {norm} ball or the input bounds "
            "(Bastion's own numerics) and were not counted as fooling the model",
            metric="constraint_violations", value=float(violations), evidence={"attack": attack, "norm": norm},
            description="This is about the attack's arithmetic, not the model: the invalid examples were "
                        "discarded, so robust accuracy may be slightly overestimated."))
    return findings


def evaluation_note(title: str, metric: str, value: float, evidence: dict, description: str) -> Finding:
    """An informational note about Bastion's own evaluation (never a finding against the model)."""
    return Finding(title=title, family="evasion", severity="info", metric=metric, value=value, threshold=0.0,
                   evidence={**evidence, "about": "evaluation"}, description=description)
