"""Compare two assessments (e.g. before and after hardening): grade, metric and finding changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bastion.assess.assessment import Assessment
from bastion.core.results import Finding, Serializable, severity_rank
from bastion.families.grading import finding_key


@dataclass
class Comparison(Serializable):
    """What changed from run `before` to run `after`."""

    before: str
    after: str
    grades: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    new: list[dict[str, Any]] = field(default_factory=list)
    resolved: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def worse(self) -> bool:
        """True when a finding is new above info or a severity went up."""
        return any(severity_rank(f["severity"]) > 0 for f in self.new) or any(
            severity_rank(c["after"]) > severity_rank(c["before"]) for c in self.changed)


def _findings(a: Assessment) -> dict[str, tuple[str, Finding]]:
    """Findings by stable key; of several with one key, the most severe."""
    out: dict[str, tuple[str, Finding]] = {}
    for fam in a.families:
        for f in fam.findings:
            key = finding_key(fam.family, f)
            if key not in out or severity_rank(f.severity) > severity_rank(out[key][1].severity):
                out[key] = (fam.family, f)
    return out


def _brief(family: str, f: Finding) -> dict[str, Any]:
    return {"family": family, "severity": f.severity, "title": f.title, "metric": f.metric, "value": f.value}


def compare(before: Assessment, after: Assessment) -> Comparison:
    """Grades per family, every headline metric present in either run, and new / resolved / changed findings."""
    out = Comparison(before.run_id, after.run_id)
    families = [f.family for f in before.families] + [f.family for f in after.families
                                                      if before.family(f.family) is None]
    for name in families:
        a, b = before.family(name), after.family(name)
        out.grades.append({"family": name, "before": a.grade if a else "N/A", "after": b.grade if b else "N/A"})
        ma, mb = (a.headline if a else {}), (b.headline if b else {})
        for key in list(ma) + [k for k in mb if k not in ma]:
            va, vb = ma.get(key), mb.get(key)
            delta = vb - va if va is not None and vb is not None else None
            out.metrics.append({"family": name, "metric": key, "before": va, "after": vb, "delta": delta})
    fa, fb = _findings(before), _findings(after)
    for key, (family, f) in fb.items():
        if key not in fa:
            out.new.append(_brief(family, f))
        elif fa[key][1].severity != f.severity:
            out.changed.append({"family": family, "metric": f.metric, "title": f.title,
                                "before": fa[key][1].severity, "after": f.severity})
    out.resolved = [_brief(family, f) for key, (family, f) in fa.items() if key not in fb]
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def render_comparison_markdown(c: Comparison) -> str:
    """The comparison as Markdown (for a pull request or a terminal)."""
    from bastion.report.markdown import md_escape as e

    lines = [f"## Bastion: run {e(c.before)} -> {e(c.after)}", "", "| family | before | after |", "|---|---|---|"]
    lines += [f"| {e(g['family'])} | {e(g['before'])} | {e(g['after'])} |" for g in c.grades]
    lines += ["", "| family | metric | before | after | change |", "|---|---|---|---|---|"]
    for m in c.metrics:
        change = "" if m["delta"] is None else f"{m['delta']:+.4g}"
        lines.append(f"| {e(m['family'])} | {e(m['metric'])} | {_fmt(m['before'])} | {_fmt(m['after'])} | {change} |")
    for title, rows in (("New findings", c.new), ("Resolved findings", c.resolved)):
        lines += ["", f"### {title} ({len(rows)})", ""]
        lines += [f"- **{e(r['severity'])}** \\[{e(r['family'])}\\] {e(r['title'])}" for r in rows] or ["None."]
    lines += ["", f"### Severity changes ({len(c.changed)})", ""]
    lines += [f"- \\[{e(r['family'])}\\] {e(r['metric'])}: {e(r['before'])} -> {e(r['after'])} ({e(r['title'])})"
              for r in c.changed] or ["None."]
    return "\n".join(lines) + "\n"
