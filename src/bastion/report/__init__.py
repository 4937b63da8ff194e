"""Reports of an assessment: one self-contained HTML page, JSON, SARIF 2.1.0 and a Markdown summary."""

from __future__ import annotations

from pathlib import Path

import yaml

from bastion.assess.assessment import Assessment
from bastion.core.errors import ParameterError

FORMATS = ("html", "json", "sarif", "md")
FILE_NAMES = {"html": "report.html", "json": "report.json", "sarif": "report.sarif", "md": "summary.md"}


def render(a: Assessment, fmt: str) -> str:
    """The text of one report format."""
    if fmt == "html":
        from bastion.report.html import render_html

        return render_html(a)
    if fmt == "json":
        from bastion.report.json_report import render_json

        return render_json(a)
    if fmt == "sarif":
        from bastion.report.sarif import render_sarif

        return render_sarif(a)
    if fmt == "md":
        from bastion.report.markdown import render_markdown

        return render_markdown(a)
    raise ParameterError(f"unknown report format {fmt!r}: use {', '.join(FORMATS)}")


def write_reports(a: Assessment, out: str | Path, formats: tuple[str, ...] = FORMATS) -> dict[str, Path]:
    """Write the chosen formats (and the plan as plan.yaml) into folder `out`; return the paths by format."""
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParameterError(f"cannot create the report folder {folder}: {exc.strerror or exc}") from None
    paths = {}
    for fmt in formats:
        path = folder / FILE_NAMES[fmt]
        path.write_text(render(a, fmt), encoding="utf-8")
        paths[fmt] = path
    plan = folder / "plan.yaml"
    plan.write_text(yaml.safe_dump(a.plan, sort_keys=False, default_flow_style=None), encoding="utf-8")
    paths["plan"] = plan
    return paths


__all__ = ["FILE_NAMES", "FORMATS", "render", "write_reports"]
