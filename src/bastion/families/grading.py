"""Grades, finding identity and mitigations: how an assessment's findings become a verdict (every family).

A family's grade follows its worst finding: A (nothing above info), B (low), C (medium), D (high), F (critical).
A family that could not run is N/A. A family with a failed job is graded "incomplete", never a letter: what ran
may look better than the whole would (no false comfort); the overall grade is then "incomplete" too. Otherwise the
overall grade is the worst family grade. A grade measured through black-box access only is an upper bound.
"""

from __future__ import annotations

from collections.abc import Iterable

from bastion.core.results import SEVERITIES, Finding, severity_rank

GRADES = {"info": "A", "low": "B", "medium": "C", "high": "D", "critical": "F"}
GRADE_ORDER = ("A", "B", "C", "D", "F")
INCOMPLETE = "incomplete"
BLACK_BOX_NOTE = "upper bound: weaker evaluation than white-box"
GRADE_MEANING = {
    "A": "no weakness found above informational level",
    "B": "minor weaknesses",
    "C": "moderate weaknesses: fix before exposure to untrusted users",
    "D": "serious weaknesses: an attacker succeeds with modest effort",
    "F": "critical: the attack succeeds cheaply or the file is unsafe to load",
    "N/A": "not assessed",
    INCOMPLETE: "not graded: a job failed, and what ran alone could understate the risk",
}

def worst(findings: Iterable[Finding]) -> str | None:
    """The highest severity among findings, or None."""
    ranks = [severity_rank(f.severity) for f in findings]
    return SEVERITIES[max(ranks)] if ranks else None


def grade_of(findings: Iterable[Finding]) -> str:
    """A..F from the worst finding (A when there are none above info)."""
    return GRADES[worst(findings) or "info"]


def family_grade(findings: Iterable[Finding], status: str) -> str:
    """A..F from the worst finding when every job ran; "incomplete" when one failed."""
    return INCOMPLETE if status in ("partial", "failed") else grade_of(findings)


def overall_grade(grades: Iterable[str]) -> str:
    """"incomplete" when a family is; else the worst assessed family grade; N/A when none was assessed."""
    grades = list(grades)
    if INCOMPLETE in grades:
        return INCOMPLETE
    assessed = [g for g in grades if g in GRADE_ORDER]
    return max(assessed, key=GRADE_ORDER.index) if assessed else "N/A"


def black_box_reason(white_box: bool, reason: str = "") -> str:
    """A family reason that says when its grade comes from a black-box (scores or labels) evaluation."""
    if white_box:
        return reason
    return f"{BLACK_BOX_NOTE}; {reason}" if reason else BLACK_BOX_NOTE


def finding_key(family: str, finding: Finding) -> str:
    """A stable identity of a finding across runs (its title holds numbers that change)."""
    ev = finding.evidence or {}
    parts = [family, finding.metric, str(ev.get("attack") or ev.get("rule") or "")]
    for name in ("norm", "file", "member", "global"):
        if ev.get(name) not in (None, ""):
            value = str(ev[name])
            parts.append(value.rsplit("/", 1)[-1] if name == "file" else value)
    return "|".join(parts)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Most severe first, then by title."""
    return sorted(findings, key=lambda f: (-severity_rank(f.severity), f.title))


def count_by_severity(findings: Iterable[Finding]) -> dict[str, int]:
    counts = {s: 0 for s in reversed(SEVERITIES)}
    for f in findings:
        counts[f.severity] += 1
    return counts


def mitigations(standard: Iterable[str], findings: list[Finding]) -> list[str]:
    """The recommendations of a family's findings above info, plus the family's `standard` mitigations."""
    out: list[str] = []
    for f in sort_findings(findings):
        if severity_rank(f.severity) > 0 and f.recommendation and f.recommendation not in out:
            out.append(f.recommendation)
    if out:
        out += [m for m in standard if m not in out]
    return out
