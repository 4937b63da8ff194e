"""The evasion ids (MITRE ATLAS, OWASP ML Top 10) and evaluation notes shared below the families; judging an
evasion result into findings is the evasion family's (`bastion.families.evasion.evasion_findings`)."""

from __future__ import annotations

from bastion.core.results import Finding

# MITRE ATLAS: AML.T0043 Craft Adversarial Data, AML.T0015 Evade ML Model. OWASP ML Top 10: ML01 Input Manipulation.
EVASION_ATLAS = ["AML.T0043", "AML.T0015"]
EVASION_OWASP = ["ML01:2023 Input Manipulation Attack"]


def evaluation_note(title: str, metric: str, value: float, evidence: dict, description: str) -> Finding:
    """An informational note about Bastion's own evaluation (never a finding against the model)."""
    return Finding(title=title, family="evasion", severity="info", metric=metric, value=value, threshold=0.0,
                   evidence={**evidence, "about": "evaluation"}, description=description)
