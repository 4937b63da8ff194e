"""`bastion list [attacks|defenses|probes]`: what the registry holds."""

from __future__ import annotations

import typer
from rich.table import Table

from bastion.cli.common import console
from bastion.core import registry
from bastion.core.errors import ParameterError


def register(app: typer.Typer) -> None:
    @app.command("list", help="List registered attacks, defenses and probes.")
    def list_entries(
        kind: str | None = typer.Argument(None, help="attacks, defenses or probes (default: all)"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        kinds = registry.KINDS if kind is None else (kind,)
        if kind is not None and kind not in registry.KINDS:
            raise ParameterError(f"unknown kind {kind!r}: use {', '.join(registry.KINDS)}")
        rows = [(k, e["family"] or "", e["name"], e["summary"]) for k in kinds for e in registry.entries(k)]
        if as_json:
            import json

            typer.echo(json.dumps([dict(zip(("kind", "family", "name", "summary"), r, strict=True)) for r in rows]))
            return
        table = Table(show_header=True)
        for col in ("kind", "family", "name", "summary"):
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        console.print(table)
