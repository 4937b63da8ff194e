"""The assessment's grade table on the terminal (`bastion assess`, `bastion demo`)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from bastion.assess.assessment import Assessment
from bastion.core.results import severity_rank
from bastion.families.grading import sort_findings


def print_summary(a: Assessment, paths: dict[str, Path] | None = None, console: Console | None = None) -> None:
    """The grade table (on stdout unless `console` says otherwise), failed jobs and the report files."""
    console = console or Console()
    table = Table(title=f"Bastion assessment of {a.title}: grade {a.grade}  (run {a.run_id})")
    for col in ("family", "grade", "status", "worst finding"):
        table.add_column(col, overflow="fold")
    for f in a.families:
        ranked = sort_findings(f.findings)
        worst = f"{ranked[0].severity}: {ranked[0].title}" if ranked and severity_rank(ranked[0].severity) else "-"
        table.add_row(f.title, f.grade, f.status + (f" ({f.reason})" if f.reason else ""), worst)
    console.print(table)
    for fam in a.families:
        for err in fam.errors:
            console.print(f"[yellow]job failed[/yellow] {err}")
    for fmt, path in (paths or {}).items():
        console.print(f"{fmt:>6}: {path}")
