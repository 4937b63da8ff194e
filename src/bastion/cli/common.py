"""Helpers shared by the commands: building objects from `--param value` pairs, loading data, printing results."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from bastion.core.data import Dataset
from bastion.core.data_files import load_dataset
from bastion.core.errors import BastionError, ParameterError
from bastion.core.params import accepts, construct, parse_extra
from bastion.core.results import SEVERITIES, Result, severity_rank

console = Console(stderr=False)
EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def build_with_datasets(cls: type, args: list[str], defaults: dict[str, Any], label: str | None,
                        what: str) -> tuple[Any, dict[str, Dataset]]:
    """Build `cls` from `--name value` pairs (plus `defaults` it accepts) and load the paths it names as datasets.

    Names in `cls.dataset_params` are data files handed to `run`; every other pair is an `__init__` parameter."""
    params = parse_extra(args)
    for key, value in defaults.items():
        if value is not None and accepts(cls, key):
            params.setdefault(key, value)
    if "seed" in params:
        check_seed(params["seed"])
    paths = {role: params.pop(role) for role in getattr(cls, "dataset_params", ()) if role in params}
    obj = construct(cls, params, what)
    return obj, {role: load_data(Path(str(path)), label, None, role) for role, path in paths.items()}


SEED_MAX = 2**32 - 1


def check_seed(seed: Any, option: str = "--seed") -> int:
    """A seed every random generator accepts (NumPy, torch, Python): a whole number in [0, 2^32 - 1]."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
        raise ParameterError(f"{option} must be a whole number in [0, {SEED_MAX}], got {str(seed)[:40]}")
    return seed


def load_data(path: Path | None, label: str | None, n_samples: int | None, role: str = "data") -> Dataset | None:
    if path is None:
        return None
    if n_samples is not None and n_samples < 1:
        raise ParameterError(f"--n-samples must be at least 1, got {n_samples}")
    data = load_dataset(path, label=label, name=f"{role} ({Path(path).name})")
    return data.head(n_samples)


def fail_on_level(value: str | None) -> int | None:
    if value is None or value.lower() == "never":
        return None
    if value.lower() not in SEVERITIES:
        raise ParameterError(f"--fail-on must be one of {', '.join(SEVERITIES)} or never")
    return severity_rank(value.lower())


def emit(result: Result, as_json: bool, fail_on: str | None) -> None:
    """Print a result (JSON or tables) with the findings its threat family judges from it; exit 2 if it is
    incomplete, 1 if a finding reaches `--fail-on`."""
    from bastion.families import registry

    level = fail_on_level(fail_on)
    family = registry().get(result.family)
    if family is not None:  # attacks measure; the family plug-in judges (bastion.families)
        result.findings = family({}, 0).judge([result])
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


def print_result(result: Result) -> None:
    title = f"{result.family} · {result.attack}  ({result.queries} queries, {result.seconds:.2f} s, {result.device})"
    scalars = Table(title=title, show_header=True)
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


__all__ = ["BastionError", "EXTRA_ARGS", "build_with_datasets", "emit", "load_data"]
