"""The HTML report: one self-contained file (inline CSS, figures as data URIs, no scripts, nothing fetched)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import jinja2
import yaml

from bastion.assess.assessment import Assessment
from bastion.core.results import severity_rank
from bastion.families import registry
from bastion.families.grading import GRADE_MEANING, count_by_severity, mitigations, sort_findings
from bastion.report.llm_section import LLM_TEMPLATE, MAX_TEXT, interval, llm_probes, pct
from bastion.report.plots import family_plots
from bastion.report.template import CSS, TEMPLATE


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.4g}"


def _evidence(evidence: dict[str, Any]) -> str:
    text = json.dumps(evidence, indent=1, default=str)
    return text if len(text) < 4000 else text[:4000] + "\n..."


def _params(params: dict[str, Any]) -> str:
    """A run's parameters on one line; long lists left out and a system prompt (it may hold secrets) not shown."""
    shown = {k: ("(set)" if k == "system_prompt" and v is not None else v) for k, v in params.items()
             if k != "job" and not (isinstance(v, list) and len(v) > 8)}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def _grade_class(grade: str) -> str:
    return grade if grade in ("A", "B", "C", "D", "F") else "NA"


def reproduce_command(a: Assessment, plan_file: str = "plan.yaml") -> str:
    """The `bastion assess` command line that re-runs this assessment."""
    inputs = a.inputs
    parts = ["bastion", "assess", str(inputs.get("model"))]
    for flag, key in (("--data", "data"), ("--train-data", "train_data")):
        info = inputs.get(key) or {}
        if info.get("path"):
            parts += [flag, str(info["path"])]
    if inputs.get("language_model"):  # member/non-member texts, the system prompt file, the endpoint options
        texts = inputs.get("texts") or {}
        for flag, key in (("--data", "nonmembers"), ("--train-data", "members")):
            if flag not in parts and (texts.get(key) or {}).get("path"):
                parts += [flag, str(texts[key]["path"])]
        if (inputs.get("system_prompt") or {}).get("path"):
            parts += ["--system-prompt", str(inputs["system_prompt"]["path"])]
        for flag, key in (("--api-key-env", "api_key_env"), ("--api-model", "api_model")):
            if (inputs.get("lm_options") or {}).get(key):
                parts += [flag, str(inputs["lm_options"][key])]
    for flag, key in (("--label", "label"), ("--arch", "arch"), ("--access", "access")):
        if inputs.get(key):
            parts += [flag, str(inputs[key])]
    if inputs.get("trust"):
        parts.append("--trust")
    parts += ["--plan", plan_file, "--seed", str(a.seed)]
    if a.backend != "local":
        parts += ["--backend", a.backend]
    sandbox = a.environment.get("sandbox") or {}
    if sandbox.get("no_sandbox"):
        parts.append("--no-sandbox")
    if sandbox.get("timeout"):
        parts += ["--timeout", f"{sandbox['timeout']:g}"]
    return " ".join(shlex.quote(p) for p in parts)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, loader=jinja2.DictLoader({"llm.html": LLM_TEMPLATE}))
    env.filters.update(num=_num, evidence=_evidence, params=_params, gradeclass=_grade_class,
                       sortfindings=sort_findings, pct=pct, ci=interval)
    return env


def _standard_mitigations(family: str) -> tuple[str, ...]:
    """The mitigations the family plug-in recommends (none for a family no longer registered)."""
    cls = registry().get(family)
    return cls.mitigations if cls else ()


def render_html(a: Assessment) -> str:
    """The report page of an assessment."""
    families = []
    for report in a.families:
        ranked = sort_findings(report.findings)
        families.append({"report": report, "plots": family_plots(report),
                         "mitigations": mitigations(_standard_mitigations(report.family), report.findings),
                         "llm": llm_probes(report),
                         "top": ranked[0] if ranked and severity_rank(ranked[0].severity) > 0 else None})
    everything = [(f.family, x) for f in a.families for x in f.findings]
    top = sorted((p for p in everything if severity_rank(p[1].severity) > 0),
                 key=lambda p: (-severity_rank(p[1].severity), p[1].title))[:6]
    counts = count_by_severity(x for _, x in everything)
    data = a.inputs.get("data") or {}
    return _environment().from_string(TEMPLATE).render(
        a=a, css=CSS, families=families, top=top, counts=counts, grade_meaning=GRADE_MEANING,
        n_findings=sum(n for sev, n in counts.items() if sev != "info"),
        sanity=[c for f in a.families for c in f.sanity], command=reproduce_command(a),
        plan_yaml=yaml.safe_dump(a.plan, sort_keys=False, default_flow_style=None),
        data_name=f"{data_label(data)} ({data.get('n', '?')} records)", max_text=MAX_TEXT)


def data_label(data: dict) -> str:
    """The evaluation data's file name (its dataset name reads 'data (FILE)', hence 'evaluation data data')."""
    path = data.get("path")
    return Path(str(path)).name if path else str(data.get("name", "?"))
