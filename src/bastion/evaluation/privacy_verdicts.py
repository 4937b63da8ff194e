"""Privacy verdicts: findings from measured membership, inversion, attribute-inference and DP-audit results (MITRE ATLAS
and OWASP ML Top 10 mappings). Attacks only measure; the privacy family (`bastion.families.privacy`) and the LLM
family judge with these.

Membership leakage is judged on the lower end of the bootstrap interval of TPR at low FPR, so that a lucky
estimate on few records never raises an alarm and a real leak is never hidden behind a good AUC.
"""

from __future__ import annotations

from typing import Any

from bastion.core.results import Finding

# ATLAS AML.T0024.000 Infer Training Data Membership, AML.T0024.001 Invert ML Model; OWASP ML03/ML04.
MEMBERSHIP_ATLAS = ["AML.T0024.000"]
MEMBERSHIP_OWASP = ["ML04:2023 Membership Inference Attack"]
INVERSION_ATLAS = ["AML.T0024.001"]
INVERSION_OWASP = ["ML03:2023 Model Inversion Attack"]


def privacy_finding(severity: str, **fields: Any) -> Finding:
    """A finding of the privacy family (`severity` one of `core.results.SEVERITIES`)."""
    return Finding(family="privacy", severity=severity, **fields)  # type: ignore[arg-type]


def _tpr(metrics: dict[str, Any], fpr: float) -> tuple[float, float]:
    for row in metrics.get("tpr_at_fpr", []):
        if abs(row["fpr"] - fpr) < 1e-12:
            return float(row["tpr"]), float(row["ci"][0])
    return 0.0, 0.0


def membership_severity(metrics: dict[str, Any]) -> str:
    """Severity from the interval lower bounds of TPR at 1% and 0.1% FPR (and AUC for weak, broad leaks)."""
    resolution = metrics.get("fpr_resolution", 0.0)
    _, low1 = _tpr(metrics, 0.01)
    _, low01 = _tpr(metrics, 0.001) if resolution <= 0.002 else (0.0, 0.0)
    if low01 >= 0.10:
        return "critical"
    if low1 >= 0.10 or low01 >= 0.01:
        return "high"
    if low1 >= 0.03:
        return "medium"
    if low1 > 0.01 or auc_excludes_chance(metrics):
        return "low"
    return "info"


def auc_excludes_chance(metrics: dict[str, Any]) -> bool:
    """True when the AUC's confidence interval lies wholly above 0.5: the attack beats chance."""
    return float(metrics.get("auc_ci", [0.5])[0]) > 0.5


def membership_findings(attack: str, metrics: dict[str, Any]) -> list[Finding]:
    """One finding per membership attack run: the headline is TPR at 1% FPR with its interval."""
    tpr1, low1 = _tpr(metrics, 0.01)
    tpr01, _ = _tpr(metrics, 0.001)
    severity = membership_severity(metrics)
    leaks = severity != "info"
    return [privacy_finding(
        title=(f"{attack} identifies {tpr1:.1%} of training records at 1% FPR "
               f"(95% CI lower bound {low1:.1%}; {tpr01:.1%} at 0.1% FPR)"),
        severity=severity,
        metric="tpr_at_1pct_fpr", value=tpr1, threshold=0.01,
        evidence={k: metrics[k] for k in ("auc", "auc_ci", "tpr_at_fpr", "n_members", "n_nonmembers",
                                          "fpr_resolution", "most_at_risk") if k in metrics},
        atlas=MEMBERSHIP_ATLAS, owasp=MEMBERSHIP_OWASP,
        description=leakage_words(metrics, leaks),
        recommendation=("Train with DP-SGD (bastion defend dp-sgd), add regularisation and early stopping, or "
                        "return labels only; re-assess with LiRA." if leaks else ""),
    )]


def leakage_words(metrics: dict[str, Any], leaks: bool) -> str:
    """The verdict in words that follow the AUC interval (never "no leakage" when it excludes 0.5)."""
    low, high = (float(v) for v in metrics.get("auc_ci", [0.5, 0.5])[:2])
    interval = f"AUC {float(metrics.get('auc', 0.5)):.3f}, 95% CI [{low:.3f}, {high:.3f}]"
    if auc_excludes_chance(metrics):
        return f"Membership leaks: the attack beats chance ({interval} excludes 0.5)."
    if leaks:
        return f"The model's outputs reveal whether some records were in its training set ({interval})."
    return f"No membership leakage above chance was measured with this attack ({interval} includes 0.5)."


def inversion_finding(matching_rate: float, chance: float, similarity: float, n_classes: int) -> Finding:
    """Model inversion: how many class representatives resemble their own class more than any other."""
    from scipy.stats import binom

    matches = round(matching_rate * n_classes)
    significant = binom.sf(matches - 1, n_classes, chance) < 0.05  # more matches than luck explains
    if matching_rate >= 0.9 and significant:
        severity = "high"
    elif matching_rate >= 0.5 and significant:
        severity = "medium"
    elif significant:
        severity = "low"
    else:
        severity = "info"
    return privacy_finding(
        title=(f"model inversion recovers recognisable representatives for {matching_rate:.0%} of "
               f"{n_classes} classes (mean similarity to class mean {similarity:.2f})"),
        severity=severity,
        metric="inversion_matching_rate", value=matching_rate, threshold=chance,
        evidence={"similarity": similarity, "chance": chance},
        atlas=INVERSION_ATLAS, owasp=INVERSION_OWASP,
        description="Optimising inputs against the model's scores reconstructs what each class looks like.",
        recommendation="Return labels or rounded scores only, and train with DP-SGD where classes are people.",
    )


def attribute_finding(advantage_low: float, gain: float, attribute: str, advantage: float) -> Finding:
    """Attribute inference: the accuracy gained on training records over non-members (graded on the lower end
    of its interval) and over the prior."""
    edge = min(advantage_low, gain)
    severity = "high" if edge >= 0.2 else "medium" if edge >= 0.1 else "low" if edge >= 0.03 else "info"
    return privacy_finding(
        title=(f"attribute inference guesses {attribute} of training records {advantage:+.1%} better than of "
               f"non-members ({gain:+.1%} over the prior)"),
        severity=severity,
        metric="attribute_advantage", value=advantage, threshold=0.0,
        evidence={"gain_over_prior": gain, "advantage_ci_low": advantage_low},
        atlas=MEMBERSHIP_ATLAS, owasp=INVERSION_OWASP,
        description="The model's scores reveal a sensitive attribute of the records it was trained on.",
        recommendation="Remove the attribute's influence (feature selection), regularise, or train with DP-SGD.",
    )


def audit_finding(eps_lb: float, claimed: float | None, delta: float) -> Finding:
    """Critical when the lower bound exceeds the claimed epsilon: the DP claim is false."""
    violated = claimed is not None and eps_lb > claimed
    severity = "critical" if violated else "medium" if claimed is None and eps_lb >= 1.0 else "info"
    claim = f" (claimed {claimed:g})" if claimed is not None else ""
    return privacy_finding(
        title=f"DP audit: epsilon is at least {eps_lb:.2f} at delta={delta:g}{claim}",
        severity=severity,
        metric="epsilon_lower_bound", value=eps_lb, threshold=claimed,
        atlas=MEMBERSHIP_ATLAS, owasp=MEMBERSHIP_OWASP,
        description=("The measured leakage contradicts the claimed privacy guarantee: the DP implementation or "
                     "its accounting is wrong." if violated else
                     "A statistically valid lower bound on the privacy loss of the training procedure."),
        recommendation="Check per-example clipping, noise scale and accounting of the DP training." if violated
        else "",
    )


def privacy_findings(result: Any) -> list[Finding]:
    """The findings of one measured privacy result (a `bastion.core.results.Result`), by what it measured."""
    m = result.metrics
    if "tpr_at_fpr" in m:
        return membership_findings(result.attack, m)
    if "matching_rate" in m:
        return [inversion_finding(m["matching_rate"], m["chance"], m["similarity"], len(m["confidence"]))]
    if "epsilon_lower_bound" in m:
        return [audit_finding(m["epsilon_lower_bound"], m.get("claimed_epsilon"), m["delta"])]
    if "advantage_ci" in m:
        return [attribute_finding(m["advantage_ci"][0], m["gain_over_prior"], f"feature {m['attribute']}",
                                  m["advantage"])]
    return []
