"""Helpers shared by the commands: building objects from `--param value` pairs, loading data, printing results."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.table import Table

from bastion.core.arguments import SEED_MAX, build_with_datasets, check_seed, load_data
from bastion.core.errors import BastionError, ParameterError
from bastion.core.results import SEVERITIES, Result, severity_rank

console = Console(stderr=False)
EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def fail_on_level(value: str | None) -> int | None:
    if value is None or value.lower() == "never":
        return None
    if value.lower() not in SEVERITIES:
        raise ParameterError(f"--fail-on must be one of {', '.join(SEVERITIES)} or never")
    return severity_rank(value.lower())


def emit(result: Result, as_json: bool, fail_on: str | None, judged: bool = False) -> None:
    """Print a result (JSON or tables) with the findings its threat family judges from it (`judged`: the job did
    already); exit 2 if it is incomplete, 1 if a finding reaches `--fail-on` or, with `--fail-on`, if a budget or
    deadline stopped it (a partial run is never a clean pass)."""
    level = fail_on_level(fail_on)
    if not judged:  # attacks measure; the family plug-in judges (bastion.families)
        from bastion.families import judged as judge

        judge(result)
    if result.partial:  # the first line says it, before any table (and on stderr beside the JSON)
        line = f"{result.reason or 'stopped early'}; the figures cover only what was measured"
        typer.echo(f"bastion: partial: {line}" if as_json else f"PARTIAL: {line}", err=as_json)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
    else:
        print_result(result)
    incomplete = result.metrics.get("incomplete")
    if incomplete:
        typer.echo(f"error: {incomplete} (results above are partial)", err=True)
        raise typer.Exit(2)
    worst = result.worst_severity()
    if level is not None and worst is not None and severity_rank(worst) >= level:
        raise typer.Exit(1)
    if level is not None and result.partial:
        typer.echo("error: --fail-on: the run is partial, so it cannot pass", err=True)
        raise typer.Exit(1)


def print_result(result: Result) -> None:
    # the heading on its own line: as a table title it wraps inside a narrow table
    console.print(f"[bold]{result.family} · {result.attack}[/bold]  ({result.queries} queries, {result.seconds:.2f} s, "
                  f"{result.device})", soft_wrap=False, overflow="fold")
    scalars = Table(show_header=True)
    scalars.add_column("metric")
    scalars.add_column("value", justify="right")
    lists = {}
    for key, value in result.metrics.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            lists[key] = value
        elif isinstance(value, float):
            scalars.add_row(key, f"{value:.4f}")
        elif not isinstance(value, (dict, list)):
            scalars.add_row(key, str(value))
    console.print(scalars)
    for key, rows in lists.items():
        table = Table(title=key)
        columns = list(rows[0])
        for col in columns:
            table.add_column(col, justify="right")
        for row in rows:
            table.add_row(*(f"{row.get(c):.4f}" if isinstance(row.get(c), float) else str(row.get(c)) for c in columns))
        console.print(table)
    for finding in result.findings:
        console.print(f"[bold]{finding.severity.upper():>8}[/bold]  {finding.title}")


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


__all__ = ["BastionError", "EXTRA_ARGS", "SEED_MAX", "build_with_datasets", "check_seed", "emit", "load_data"]
