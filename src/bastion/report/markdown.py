"""The Markdown summary for pull requests: grades, the findings that matter, failed sanity checks.

Every piece of text that can come from a file (model names, archive member names, finding details) is escaped
for both Markdown and HTML, so a hostile name cannot add links, images, mentions, tables or HTML to a CI step
summary."""

from __future__ import annotations

import re

from bastion.assess.assessment import Assessment
from bastion.core.results import severity_rank
from bastion.families.grading import GRADE_MEANING, sort_findings
from bastion.report.llm_section import interval, llm_probes, pct

_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}
_MARKDOWN = set("\\`*_{}[]#!|~@$")  # links, images, emphasis, code, tables, mentions, math
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def md_escape(text: object) -> str:
    """`text` on one line as literal Markdown text: HTML's special characters become entities and the punctuation
    that starts Markdown constructs is backslash-escaped (CommonMark lets any ASCII punctuation be escaped)."""
    flat = _CONTROL.sub(" ", str(text))
    return "".join(_HTML.get(c) or (f"\\{c}" if c in _MARKDOWN else c) for c in flat)


def md_code(text: object) -> str:
    """`text` on one line as a Markdown code span, which shows it literally: the fence is one backtick longer than
    the longest run of backticks inside, so the text cannot close it."""
    flat = _CONTROL.sub(" ", str(text))
    fence = "`" * (max((len(run) for run in re.findall(r"`+", flat)), default=0) + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


_cell = md_escape


def render_markdown(a: Assessment, max_findings: int = 15) -> str:
    """A short Markdown summary (GitHub-flavoured) of an assessment."""
    lines = [f"## Bastion assessment of {md_code(a.title)}: grade **{_cell(a.grade)}**", "",
             f"{GRADE_MEANING.get(a.grade, '')}."]
    if not a.complete:
        lines += ["", "> **Incomplete:** some jobs failed or the run was interrupted; grades cover what ran."]
    lines += ["", "| family | grade | status | worst finding |", "|---|---|---|---|"]
    for f in a.families:
        ranked = sort_findings(f.findings)
        worst = (f"{_cell(ranked[0].severity)}: {_cell(ranked[0].title)}"
                 if ranked and severity_rank(ranked[0].severity) > 0 else "none")
        status = _cell(f.status) + (f" ({_cell(f.reason)})" if f.reason else "")
        lines.append(f"| {_cell(f.title)} | {_cell(f.grade)} | {status} | {worst} |")
    serious = [(f.family, x) for f in a.families for x in sort_findings(f.findings) if severity_rank(x.severity) > 0]
    serious.sort(key=lambda p: -severity_rank(p[1].severity))
    lines += ["", f"### Findings above info ({len(serious)})", ""]
    if not serious:
        lines.append("None.")
    for family, x in serious[:max_findings]:
        ids = ", ".join(_cell(i) for i in x.atlas + x.owasp)
        lines.append(f"- **{_cell(x.severity)}** \\[{_cell(family)}\\] {_cell(x.title)}" + (f" ({ids})" if ids else ""))
    if len(serious) > max_findings:
        lines.append(f"- ... and {len(serious) - max_findings} more (see the HTML report)")
    for f in a.families:
        lines += _llm_tables(llm_probes(f))
    checks = [c for f in a.families for c in f.sanity]
    failed = [c for c in checks if not c.passed]
    lines += ["", f"### Sanity checks: {len(checks) - len(failed)}/{len(checks)} passed", ""]
    lines += [f"- failed `{c.family}/{c.name}`: {_cell(c.detail)}" for c in failed]
    sandbox = a.environment.get("sandbox") or {}
    code = "" if not sandbox or sandbox.get("sandboxed") else f"model code not sandboxed ({sandbox.get('reason')}) · "
    lines += ["", f"<sub>run `{a.run_id}` · seed {a.seed} · {a.backend} backend · {a.seconds:.0f} s · {code}"
              "full report: report.html</sub>", ""]
    return "\n".join(lines)


def _rate_row(label: str, row: dict, *more: str) -> str:
    cells = [label, f"{row['k']}/{row['n']}", pct(row.get("rate")), interval(row.get("interval")), *more]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _llm_tables(probes: list[dict]) -> list[str]:
    """One compact table per language-model probe (rates with 95% intervals; no transcripts)."""
    if not probes:
        return []
    lines = ["", "### Language-model probes"]
    for p in probes:
        state = "" if p["status"] == "complete" else f" ({_cell(p['status'])}: {_cell(p['reason'])})"
        if p["probe"] in ("leak", "inject"):
            what = "leaks" if p["probe"] == "leak" else "successes"
            lines += ["", f"**{p['probe']}**{state}", "", f"| {'technique' if p['probe'] == 'leak' else 'group'} "
                      f"| {what}/n | rate | 95% interval |", "|---|---|---|---|"]
            if p["overall"]:
                lines.append(_rate_row("overall", p["overall"]))
            groups = (("", p["techniques"]),) if p["probe"] == "leak" else (
                ("technique", p["techniques"]), ("placement", p["placements"]), ("task", p["tasks"]),
                ("baseline accuracy", p["baseline"]))
            lines += [_rate_row(f"{group}: {row['name']}" if group else row["name"], row)
                      for group, rows in groups for row in rows]
        elif p["probe"] == "jailbreak":
            lines += ["", f"**jailbreak**{state}", "",
                      "| technique | successes/n | raw rate (95%) | corrected rate (95%) |", "|---|---|---|---|"]
            for row in p["techniques"] + ([p["overall"]] if p["overall"] else []):
                cells = [row["name"], f"{row['k']}/{row['n']}", f"{pct(row['raw'])} {interval(row['raw_interval'])}",
                         f"{pct(row['corrected'])} {interval(row['corrected_interval'])}"]
                lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
            if p["judge"]:
                j = p["judge"]
                lines += ["", _cell(f"Judge: sensitivity {pct(j['sensitivity'])}, specificity {pct(j['specificity'])} "
                                    f"(TP {j['tp']}, FP {j['fp']}, FN {j['fn']}, TN {j['tn']})."
                                    + (f" False refusal {pct(p['false_refusal']['rate'])} of "
                                       f"{p['false_refusal']['n']} benign prompts." if p["false_refusal"] else ""))]
        elif p["probe"] == "membership":
            lines += ["", f"**membership**{state}", "", "| score | TPR at 1% FPR | AUC |", "|---|---|---|"]
            for s in p["scores"]:
                auc = f"{s['auc']:.3f}" if isinstance(s["auc"], (int, float)) else "n/a"
                name = s["name"] + (" (best)" if s["best"] else "")
                lines.append(f"| {_cell(name)} | {_cell(pct(s['tpr1']))} | {_cell(auc)} |")
    return lines
