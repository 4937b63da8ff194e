"""`bastion report list | show RUN | compare RUN_A RUN_B | guard --audit LOG`: the run history of assessments, and
a summary of a `bastion guard` audit log."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from bastion.assess.assessment import Assessment
from bastion.cli.common import console
from bastion.report import FORMATS, render, write_reports
from bastion.report.compare import compare, render_comparison_markdown
from bastion.store import RunStore

STORE_HELP = "run-history database (default $BASTION_STORE, else ~/.local/share/bastion/runs.sqlite)"


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Browse and compare recorded assessments.", no_args_is_help=True)
    app.add_typer(group, name="report")

    @group.command("list", help="Recorded runs, newest first.")
    def list_runs(
        store_path: Path | None = typer.Option(None, "--store", help=STORE_HELP),
        limit: int = typer.Option(20, "--limit", min=1),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        with RunStore(store_path) as store:
            rows = store.list_runs(limit)
        if as_json:
            typer.echo(json.dumps(rows))
            return
        table = Table(title=f"{len(rows)} run(s)")
        for col in ("run", "created", "status", "grade", "worst", "model", "backend", "jobs"):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(r["id"], r["created"], r["status"], r["grade"] or "-", r["worst"] or "-",
                          Path(r["model"]).name or r["model"], r["backend"] or "-", str(r["jobs_done"]))
        console.print(table)

    @group.command("show", help="Print a run's report (Markdown by default) or write its files with --out.")
    def show(
        run: str = typer.Argument("last", help="run id, unique prefix, last or last~N "
                                "(last~ is last~1, the run before the last)"),
        fmt: str = typer.Option("md", "--format", help=f"one of {', '.join(FORMATS)}"),
        out: Path | None = typer.Option(None, "--out", help="write every format into this folder instead"),
        store_path: Path | None = typer.Option(None, "--store", help=STORE_HELP),
    ) -> None:
        with RunStore(store_path) as store:
            assessment = store.assessment(run, Assessment.from_json)
        if out is not None:
            for kind, path in write_reports(assessment, out).items():
                console.print(f"{kind:>6}: {path}")
            return
        typer.echo(render(assessment, fmt), nl=False)

    @group.command("compare", help="What changed between two runs: grades, metrics, new and resolved findings.")
    def compare_runs(
        before: str = typer.Argument(..., help="the earlier run (e.g. before hardening; last~ is the run before "
                                     "the last)"),
        after: str = typer.Argument("last", help="the later run"),
        as_json: bool = typer.Option(False, "--json"),
        fail_if_worse: bool = typer.Option(False, "--fail-if-worse",
                                           help="exit 1 when a finding is new or more severe in the later run"),
        store_path: Path | None = typer.Option(None, "--store", help=STORE_HELP),
    ) -> None:
        with RunStore(store_path) as store:
            result = compare(*(store.assessment(run, Assessment.from_json) for run in (before, after)))
        if as_json:
            typer.echo(json.dumps(result.to_dict()))
        else:
            typer.echo(render_comparison_markdown(result), nl=False)
        if fail_if_worse and result.worse:
            raise typer.Exit(1)

    @group.command("guard", help="Summarise a `bastion guard` audit log: requests, verdicts and rule hits per key.")
    def guard_summary(
        audit: Path = typer.Option(Path("bastion-guard.sqlite"), "--audit", help="the guard's audit log"),
        since: str | None = typer.Option(None, "--since", help="30s, 10m, 2h, 1d or an ISO date/time"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        from bastion.store.guard_log import guard_log_summary, render_guard_summary

        summary = guard_log_summary(audit, None if since is None else _since(since))
        typer.echo(json.dumps(summary) if as_json else render_guard_summary(summary), nl=as_json)


def _since(text: str) -> float:
    """A time: `30s`, `10m`, `2h`, `1d` ago or an ISO 8601 date/time (UTC unless it says otherwise)."""
    import time
    from datetime import datetime, timezone

    from bastion.core.errors import DataError

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(text[:-1]) * units[text[-1]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise DataError(f"--since {text!r}: expected 30s, 10m, 2h, 1d or an ISO date/time") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
