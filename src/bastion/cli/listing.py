"""`bastion list [KIND | NAME]`: what the registry holds, and one entry's parameters.

Answers from `cli/catalog.py` (the source read with `ast`), so it starts in well under a second: torch is not
imported.
"""

from __future__ import annotations

import json

import typer

from bastion.cli import catalog
from bastion.core.errors import ParameterError


def register(app: typer.Typer) -> None:
    @app.command("list", help="List attacks, defenses and threat families, or one entry's parameters "
                 "(`bastion list pgd`, `bastion list evasion/pgd`).")
    def list_entries(
        what: str | None = typer.Argument(None, help="attacks, defenses, families, or an entry's [family/]name"),
        as_json: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        if what is None or what in catalog.KINDS:
            print_overview(catalog.KINDS if what is None else (what,), as_json)
        else:
            family, _, name = what.rpartition("/")
            print_entries(catalog.find(name, family or None), what, as_json)


def print_overview(kinds: tuple[str, ...], as_json: bool) -> None:
    rows = [e for kind in kinds for e in catalog.entries(kind)]
    if as_json:
        typer.echo(json.dumps([{"kind": e.kind, "family": e.family, "name": e.name, "summary": e.summary}
                               for e in rows]))
        return
    for kind in kinds:
        typer.echo(f"{kind}:")
        family = None
        for entry in (e for e in rows if e.kind == kind):
            if entry.family != family:
                family = entry.family
                typer.echo(f"  {family or '(any)'}")
            typer.echo(wrap(f"    {entry.name:<18}", entry.summary, indent=22))
    typer.echo("Parameters of one: bastion list NAME (or FAMILY/NAME).")


def print_entries(entries: list[catalog.Entry], what: str, as_json: bool) -> None:
    if not entries:
        known = sorted({e.name for kind in catalog.KINDS for e in catalog.entries(kind)})
        raise ParameterError(f"unknown kind or name {what!r}; kinds: {', '.join(catalog.KINDS)}; "
                             f"names: {', '.join(known)}")
    if as_json:
        typer.echo(json.dumps([{"kind": e.kind, "family": e.family, "name": e.name, "summary": e.summary,
                                "parameters": [vars(p) for p in e.parameters]} for e in entries]))
        return
    for entry in entries:
        typer.echo(parameter_help(entry))


# Defaults that `bastion attack` and `assess` choose from the data (sandbox/spec.py, families/evasion.py: default_norm)
DATA_DEFAULTS = {("attacks", "evasion", "norm"): "when not given, `bastion attack` and `assess` use linf for images "
                                                 "and l2 for feature vectors"}


def parameter_help(entry: catalog.Entry) -> str:
    """One entry's parameters as `--name TYPE = DEFAULT` lines with their meaning below, within 80 columns."""
    head = f"{entry.kind[:-1]} {entry.family + '/' if entry.family else ''}{entry.name}: {entry.summary}"
    lines = [wrap("", head, indent=2), "parameters (--name value; a comma list where a list is accepted):"]
    for param in entry.parameters:
        kind = f" {param.type}" if param.type else ""
        lines.append(wrap("  ", f"--{param.name.replace('_', '-')}{kind} = {param.default}", indent=6))
        meaning = "; ".join(filter(None, [param.meaning, DATA_DEFAULTS.get((entry.kind, entry.family, param.name))]))
        if meaning:
            lines.append(wrap(" " * 6, meaning, indent=6))
    if not entry.parameters:
        lines.append("  (none)")
    return "\n".join(lines)


def wrap(prefix: str, text: str, indent: int, width: int = 80) -> str:
    """`prefix + text` folded at word boundaries to `width` columns, continuation lines indented."""
    lines, line = [], prefix
    for word in text.split():
        fresh = not line.strip()
        if not fresh and len(line) + 1 + len(word) > width:
            lines.append(line)
            line, fresh = " " * indent, True
        line += word if line.endswith(" ") or not line else " " + word
    lines.append(line.rstrip())
    return "\n".join(lines)
