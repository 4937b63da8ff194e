"""The language-model section of the reports: per-probe tables (rates with their 95% intervals) and example
transcripts of the `leak`, `inject`, `jailbreak` and `membership` results of an assessment's "llm" family.

Every prompt and every reply is hostile text: `clip` cuts it to `MAX_TEXT` characters (with a visible "…") and makes
control and bidirectional-override characters visible; the HTML template escapes it (Jinja2 autoescape, never
`|safe`) and the Markdown summary shows no transcript at all.
"""

from __future__ import annotations

import math
import re
from typing import Any

from bastion.core.results import Result
from bastion.families import registry
from bastion.families.base import FamilyReport

MAX_TEXT = 400
EXAMPLES = 2  # transcripts per technique
PROBES = ("leak", "inject", "jailbreak", "membership")
# C0/C1 controls except tab and newline, and the Unicode bidi/zero-width controls that can disguise text
_HIDDEN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def clip(text: Any, limit: int = MAX_TEXT) -> str:
    """`text` as a string of at most `limit` characters (then ending in "…"), hidden controls shown as \\uXXXX."""
    flat = _HIDDEN.sub(lambda m: f"\\u{ord(m.group()):04x}", "" if text is None else str(text))
    return flat if len(flat) <= limit else flat[:limit].rstrip() + "…"


def pct(value: Any) -> str:
    """A rate in [0, 1] as a percentage ("n/a" when missing or not finite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.1f}%"


def interval(bounds: Any) -> str:
    """A [low, high] rate interval as "[a%, b%]"."""
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        return "n/a"
    return f"[{pct(bounds[0])}, {pct(bounds[1])}]"


def _rows(groups: Any, count: str) -> list[dict[str, Any]]:
    """Table rows from {name: {count, n, rate, interval, ...}} (leak/inject summaries)."""
    if not isinstance(groups, dict):
        return []
    return [{"name": clip(name, 80), "k": g.get(count, 0), "n": g.get("n", 0), "rate": g.get("rate"),
             "interval": g.get("interval"), "overlap": g.get("prompt_overlap")}
            for name, g in groups.items() if isinstance(g, dict)]


def _example(technique: Any, success: Any, turns: list[tuple[Any, Any]], **about: Any) -> dict[str, Any]:
    """One transcript to show: every text clipped; `about` (placement, task, category, goal) empty when absent."""
    return {"technique": clip(technique, 80), "success": bool(success),
            "turns": [{"user": clip(u), "reply": clip(a)} for u, a in turns],
            **{k: clip(about.get(k) or "", 80) for k in ("placement", "task", "category", "goal")}}


def _leak(r: Result) -> dict[str, Any]:
    techniques = r.metrics.get("techniques") or {}
    examples = []
    for name, g in techniques.items():
        picked = sorted(g.get("examples") or [], key=lambda e: not e.get("leaked"))[:EXAMPLES]
        examples += [_example(name, e.get("leaked"), list(zip(e.get("turns") or [], e.get("replies") or [],
                                                              strict=False))) for e in picked]
    overall = r.metrics.get("overall") or {}
    return {"overall": _rows({"overall": overall}, "leaks")[0] if overall else None,
            "techniques": _rows(techniques, "leaks"), "examples": examples}


def _injected_turn(cell: dict[str, Any]) -> str:
    """The user turn the target got (task, document and injection), rebuilt from the cell; the bare document when
    the cell names a technique, task or placement this version does not know."""
    from bastion.attacks.llm.injection import messages, payload

    try:
        injected = payload(cell["technique"], cell["goal"])
        return messages(cell["task"], cell["document"], injected, cell["placement"])[-1]["content"]
    except (KeyError, TypeError, ValueError, LookupError):
        return str(cell.get("document", ""))


def _inject(r: Result) -> dict[str, Any]:
    m = r.metrics
    cells = [c for c in (r.samples or {}).get("cells") or [] if isinstance(c, dict)]
    examples = []
    for name, g in (m.get("techniques") or {}).items():
        mine = sorted((c for c in cells if c.get("technique") == name), key=lambda c: not c.get("success"))
        if mine:
            picked = [{"placement": c.get("placement"), "task": c.get("task"), "goal": c.get("goal"),
                       "document": _injected_turn(c), "reply": c.get("reply"), "success": c.get("success")}
                      for c in mine[:EXAMPLES]]
        else:  # a result without per-cell samples: the summary's examples (reply only)
            picked = sorted(g.get("examples") or [], key=lambda e: not e.get("success"))[:EXAMPLES]
        examples += [_example(name, e.get("success"), [(e.get("document") or "", e.get("reply"))],
                              placement=e.get("placement"), task=e.get("task"), goal=e.get("goal"))
                     for e in picked]
    overall = m.get("overall") or {}
    return {"overall": _rows({"overall": overall}, "successes")[0] if overall else None,
            "techniques": _rows(m.get("techniques"), "successes"),
            "placements": _rows(m.get("placements"), "successes"), "tasks": _rows(m.get("tasks"), "successes"),
            "baseline": _rows(m.get("baseline"), "successes"), "examples": examples}


def _corrected(name: str, g: Any) -> dict[str, Any] | None:
    if not isinstance(g, dict):
        return None
    return {"name": clip(name, 80), "k": g.get("successes", 0), "n": g.get("n", 0), "raw": g.get("raw"),
            "raw_interval": g.get("raw_interval"), "corrected": g.get("corrected"),
            "corrected_interval": g.get("corrected_interval")}


JUDGE_KEYS = ("sensitivity", "sensitivity_interval", "specificity", "specificity_interval", "tp", "fn", "fp", "tn")


def _judge(card: Any) -> dict[str, Any] | None:
    """The judge card's numbers (see `jailbreak_judge.JudgeCard`), or None when it lacks any of them."""
    if not isinstance(card, dict) or any(k not in card for k in JUDGE_KEYS):
        return None
    try:
        counts = {k: int(card[k]) for k in ("tp", "fn", "fp", "tn")}
    except (TypeError, ValueError):
        return None
    return {**{k: card[k] for k in JUDGE_KEYS}, **counts,
            "validation": clip(card.get("validation", "validation"), 80)}


def _refusal(name: Any, row: Any) -> dict[str, Any] | None:
    if not isinstance(row, dict):
        return None
    return {"name": clip(name, 40), "rate": row.get("rate"), "interval": row.get("interval"), "n": row.get("n", 0)}


def _jailbreak(r: Result) -> dict[str, Any]:
    m = r.metrics
    techniques = [row for name, g in (m.get("techniques") or {}).items() if (row := _corrected(name, g))]
    categories = [row for name, g in (m.get("categories") or {}).items() if (row := _corrected(name, g))]
    cells = [c for c in (r.samples or {}).get("cells") or [] if isinstance(c, dict) and not c.get("error")]
    examples = []
    for row in techniques:
        mine = sorted((c for c in cells if clip(c.get("technique"), 80) == row["name"]),
                      key=lambda c: not c.get("success"))
        examples += [_example(row["name"], c.get("success"), [(c.get("prompt"), c.get("reply"))],
                              category=c.get("category")) for c in mine[:1]]
    return {"techniques": techniques, "overall": _corrected("any technique (per behaviour)", m.get("overall")),
            "categories": categories, "judge": _judge(m.get("judge")),
            "false_refusal": _refusal("all", m.get("false_refusal_overall")),
            "false_refusal_categories": [row for k, v in (m.get("false_refusal") or {}).items()
                                         if (row := _refusal(k, v))],
            "skipped": {clip(k, 40): clip(v, 200) for k, v in (m.get("skipped") or {}).items()},
            "n_behaviours": m.get("n_behaviours"), "examples": examples}


def _tpr_at(rows: Any, fpr: float) -> dict[str, Any] | None:
    return next((x for x in rows or [] if isinstance(x, dict) and abs(float(x.get("fpr", -1)) - fpr) < 1e-12), None)


def _membership(r: Result) -> dict[str, Any]:
    m = r.metrics
    scores = []
    for name, s in (m.get("scores") or {}).items():
        if not isinstance(s, dict):
            continue
        at1, at01 = _tpr_at(s.get("tpr_at_fpr"), 0.01), _tpr_at(s.get("tpr_at_fpr"), 0.001)
        scores.append({"name": clip(name, 40), "auc": s.get("auc"), "auc_ci": s.get("auc_ci"),
                       "tpr1": (at1 or {}).get("tpr"), "tpr1_ci": (at1 or {}).get("ci"),
                       "tpr01": (at01 or {}).get("tpr"), "best": name == m.get("best_score")})
    return {"scores": scores, "n_members": m.get("n_members"), "n_nonmembers": m.get("n_nonmembers"),
            "fpr_resolution": m.get("fpr_resolution"), "examples": []}


_VIEWS = {"leak": _leak, "inject": _inject, "jailbreak": _jailbreak, "membership": _membership}


def llm_probes(report: FamilyReport) -> list[dict[str, Any]]:
    """The probes of an "llm" family report, ready to show: one dict per leak/inject/jailbreak/membership result
    (`probe`, `status`, `reason`, `queries`, `seconds` and that probe's tables and examples); [] for any other
    family (one whose plug-in does not list the "llm_probes" section) or when it has none of these results."""
    family = registry().get(report.family)
    if family is None or "llm_probes" not in family.sections:
        return []
    probes = []
    for r in report.results:
        if r.attack not in _VIEWS or not isinstance(r.metrics, dict):
            continue
        if r.attack == "jailbreak" and "mitigations" in r.metrics and "techniques" not in r.metrics:
            continue  # a before/after mitigation study (`bastion attack llm jailbreak --mitigations on`)
        probes.append({"probe": r.attack, "status": r.status, "reason": clip(r.reason, 300), "queries": r.queries,
                       "seconds": r.seconds, **_VIEWS[r.attack](r)})
    return probes


LLM_TEMPLATE = """{% set probes = f.llm %}
{% if probes %}<h3>Language-model probes</h3>
<p class="muted">Rates with 95% intervals (Wilson; the jailbreak's corrected rate: Rogan&ndash;Gladen with a bootstrap
over the judge's measured error). Transcripts are model output: shown as plain text, cut at {{ max_text }}
characters (&hellip;).</p>
{% for p in probes %}<div class="probe" id="llm-{{ p.probe }}">
{% if p.probe == 'leak' %}<h4>System-prompt and secret leakage (leak)</h4>
  {% if p.overall %}<p>Canary leaked in <b>{{ p.overall.k }}/{{ p.overall.n }}</b> extraction prompts:
  <b>{{ p.overall.rate|pct }}</b> {{ p.overall.interval|ci }}; best system-prompt overlap
  {{ p.overall.overlap|pct }}.</p>{% endif %}
  <table class="llm-leak"><tr><th>technique</th><th>leaks / prompts</th><th>rate</th><th>95% interval</th>
  <th>best prompt overlap</th></tr>
  {% for t in p.techniques %}<tr><td>{{ t.name }}</td><td>{{ t.k }}/{{ t.n }}</td><td>{{ t.rate|pct }}</td>
  <td>{{ t.interval|ci }}</td><td>{{ t.overlap|pct }}</td></tr>{% endfor %}</table>
{% elif p.probe == 'inject' %}<h4>Prompt injection (inject)</h4>
  {% if p.overall %}<p>Injection succeeded in <b>{{ p.overall.k }}/{{ p.overall.n }}</b> cases:
  <b>{{ p.overall.rate|pct }}</b> {{ p.overall.interval|ci }}.</p>{% endif %}
  {% for title, rows in (('technique', p.techniques), ('placement', p.placements), ('task', p.tasks)) %}
  {% if rows %}<table class="llm-inject-{{ title }}"><tr><th>{{ title }}</th><th>successes / cases</th><th>rate</th>
  <th>95% interval</th></tr>
  {% for t in rows %}<tr><td>{{ t.name }}</td><td>{{ t.k }}/{{ t.n }}</td><td>{{ t.rate|pct }}</td>
  <td>{{ t.interval|ci }}</td></tr>{% endfor %}</table>{% endif %}{% endfor %}
  {% if p.baseline %}<table class="llm-inject-baseline"><tr><th>task without injection</th><th>correct / cases</th>
  <th>baseline accuracy</th><th>95% interval</th></tr>
  {% for t in p.baseline %}<tr><td>{{ t.name }}</td><td>{{ t.k }}/{{ t.n }}</td><td>{{ t.rate|pct }}</td>
  <td>{{ t.interval|ci }}</td></tr>{% endfor %}</table>{% endif %}
{% elif p.probe == 'jailbreak' %}<h4>Jailbreaks (jailbreak)</h4>
  <table class="llm-jailbreak"><tr><th>technique</th><th>judged successes / attempts</th><th>raw rate</th>
  <th>raw 95% interval</th><th>corrected rate</th><th>corrected 95% interval</th></tr>
  {% for t in p.techniques %}<tr><td>{{ t.name }}</td><td>{{ t.k }}/{{ t.n }}</td><td>{{ t.raw|pct }}</td>
  <td>{{ t.raw_interval|ci }}</td><td>{{ t.corrected|pct }}</td><td>{{ t.corrected_interval|ci }}</td></tr>
  {% endfor %}{% if p.overall %}{% set t = p.overall %}<tr class="overall"><td><b>{{ t.name }}</b></td>
  <td>{{ t.k }}/{{ t.n }}</td><td>{{ t.raw|pct }}</td><td>{{ t.raw_interval|ci }}</td><td>{{ t.corrected|pct }}</td>
  <td>{{ t.corrected_interval|ci }}</td></tr>{% endif %}</table>
  {% if p.categories %}<details><summary>per harm category</summary><table class="llm-jailbreak-categories">
  <tr><th>category</th><th>broken / behaviours</th><th>raw rate</th><th>corrected rate</th>
  <th>corrected 95% interval</th></tr>{% for t in p.categories %}<tr><td>{{ t.name }}</td><td>{{ t.k }}/{{ t.n }}</td>
  <td>{{ t.raw|pct }}</td><td>{{ t.corrected|pct }}</td><td>{{ t.corrected_interval|ci }}</td></tr>{% endfor %}
  </table></details>{% endif %}
  {% if p.judge %}{% set j = p.judge %}<p>The judge's measured error on {{ j.validation }}
  ({{ j.tp + j.fn }} harmful, {{ j.tn + j.fp }} harmless labelled replies): sensitivity
  <b>{{ j.sensitivity|pct }}</b> {{ j.sensitivity_interval|ci }}, specificity <b>{{ j.specificity|pct }}</b>
  {{ j.specificity_interval|ci }}.</p>
  <table class="llm-judge confusion"><tr><th></th><th>judged harmful</th><th>judged harmless</th></tr>
  <tr><th>labelled harmful</th><td>TP {{ j.tp }}</td><td>FN {{ j.fn }}</td></tr>
  <tr><th>labelled harmless</th><td>FP {{ j.fp }}</td><td>TN {{ j.tn }}</td></tr></table>{% endif %}
  {% if p.false_refusal %}<p>False refusal on benign look-alike prompts: <b>{{ p.false_refusal.rate|pct }}</b>
  {{ p.false_refusal.interval|ci }} of {{ p.false_refusal.n }}{% if p.false_refusal_categories %}
  ({% for c in p.false_refusal_categories %}{{ c.name }} {{ c.rate|pct }} of {{ c.n }}
  {{- ', ' if not loop.last else '' }}{% endfor %}){% endif %}.</p>{% endif %}
  {% for k, v in p.skipped.items() %}<p class="muted">skipped {{ k }}: {{ v }}</p>{% endfor %}
{% elif p.probe == 'membership' %}<h4>Training-data membership (membership)</h4>
  <table class="llm-membership"><tr><th>score</th><th>TPR at 1% FPR</th><th>95% interval</th><th>TPR at 0.1% FPR</th>
  <th>AUC</th><th>AUC 95% interval</th></tr>
  {% for s in p.scores %}<tr><td>{% if s.best %}<b>{{ s.name }}</b> (best){% else %}{{ s.name }}{% endif %}</td>
  <td>{{ s.tpr1|pct }}</td><td>{{ s.tpr1_ci|ci }}</td><td>{{ s.tpr01|pct }}</td><td>{{ s.auc|num }}</td>
  <td>{{ s.auc_ci|ci }}</td></tr>{% endfor %}</table>
  <p class="muted">{{ p.n_members }} member and {{ p.n_nonmembers }} non-member texts; the smallest measurable FPR
  is {{ p.fpr_resolution|pct }}.</p>
{% endif %}
  <p class="muted">{{ p.queries }} queries &middot; {{ '%.1f'|format(p.seconds) }} s{% if p.status != 'complete' %}
  &middot; <b>{{ p.status }}</b>: {{ p.reason }}{% endif %}</p>
  {% if p.examples %}<details class="transcripts"><summary>example transcripts ({{ p.examples|length }})</summary>
  {% for e in p.examples %}<div class="transcript">
    <p><b>{{ e.technique }}</b>{% if e.placement %} &middot; {{ e.placement }} &middot; {{ e.task }}{% endif %}
    {% if e.category %} &middot; {{ e.category }}{% endif %}
    {% if e.success %}<span class="sev sev-high">{{ 'leaked' if p.probe == 'leak' else 'succeeded' }}</span>
    {% else %}<span class="sev sev-info">{{ 'no leak' if p.probe == 'leak' else 'failed' }}</span>{% endif %}
    {% if e.goal %}<span class="muted">goal: {{ e.goal }}</span>{% endif %}</p>
    {% for t in e.turns %}<div class="turn user"><span class="role">user</span>{{ t.user }}</div>
    <div class="turn model"><span class="role">model</span>{{ t.reply }}</div>{% endfor %}
  </div>{% endfor %}</details>{% endif %}
</div>{% endfor %}{% endif %}
"""
