"""The Markdown summary for pull requests: grades, the findings that matter, failed sanity checks."""

from __future__ import annotations

from bastion.assess.assessment import Assessment
from bastion.assess.scoring import GRADE_MEANING, sort_findings
from bastion.core.results import severity_rank


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(a: Assessment, max_findings: int = 15) -> str:
    """A short Markdown summary (GitHub-flavoured) of an assessment."""
    lines = [f"## Bastion assessment of `{a.title}`: grade **{a.grade}**", "",
             f"{GRADE_MEANING.get(a.grade, '')}."]
    if not a.complete:
        lines += ["", "> **Incomplete:** some jobs failed or the run was interrupted; grades cover what ran."]
    lines += ["", "| family | grade | status | worst finding |", "|---|---|---|---|"]
    for f in a.families:
        ranked = sort_findings(f.findings)
        worst = (f"{ranked[0].severity}: {_cell(ranked[0].title)}"
                 if ranked and severity_rank(ranked[0].severity) > 0 else "none")
        status = f.status + (f" ({_cell(f.reason)})" if f.reason else "")
        lines.append(f"| {_cell(f.title)} | {f.grade} | {status} | {worst} |")
    serious = [(f.family, x) for f in a.families for x in sort_findings(f.findings) if severity_rank(x.severity) > 0]
    serious.sort(key=lambda p: -severity_rank(p[1].severity))
    lines += ["", f"### Findings above info ({len(serious)})", ""]
    if not serious:
        lines.append("None.")
    for family, x in serious[:max_findings]:
        ids = ", ".join(x.atlas + x.owasp)
        lines.append(f"- **{x.severity}** [{family}] {_cell(x.title)}" + (f" ({ids})" if ids else ""))
    if len(serious) > max_findings:
        lines.append(f"- ... and {len(serious) - max_findings} more (see the HTML report)")
    checks = [c for f in a.families for c in f.sanity]
    failed = [c for c in checks if not c.passed]
    lines += ["", f"### Sanity checks: {len(checks) - len(failed)}/{len(checks)} passed", ""]
    lines += [f"- failed `{c.family}/{c.name}`: {_cell(c.detail)}" for c in failed]
    sandbox = a.environment.get("sandbox") or {}
    code = "" if not sandbox or sandbox.get("sandboxed") else f"model code not sandboxed ({sandbox.get('reason')}) · "
    lines += ["", f"<sub>run `{a.run_id}` · seed {a.seed} · {a.backend} backend · {a.seconds:.0f} s · {code}"
              "full report: report.html</sub>", ""]
    return "\n".join(lines)
