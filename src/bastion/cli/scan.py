"""`bastion scan PATH ... [--json | --sarif FILE] [--fail-on high] [--convert-to-safetensors] [--manifest FILE]`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from bastion.cli.common import fail_on_level, load_data
from bastion.core.errors import BastionError
from bastion.core.results import severity_rank
from bastion.sandbox.commands import dynamic_scan, timeout_option
from bastion.supplychain import CONVERTIBLE, ScanReport, convert_to_safetensors, scan_paths, write_manifest, write_sarif

_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan", "info": "dim"}


def _print(report: ScanReport, console: Console) -> None:
    shown = report.at_or_above("low")
    if shown:
        table = Table(title="supply-chain findings", show_lines=False)
        for col in ("severity", "rule", "file", "member", "finding"):
            table.add_column(col, overflow="fold")
        for f in shown:
            ev = f.evidence
            table.add_row(f"[{_STYLE[f.severity]}]{f.severity}[/]", f.metric, Path(ev["file"]).name,
                          str(ev.get("member") or ""), f.title.split(" (")[0])
        console.print(table)
    worst = report.worst_severity()
    console.print(f"{len(report.files)} file(s) scanned in {report.seconds:.2f} s: "
                  f"{len(report.at_or_above('low'))} finding(s) at low or above"
                  + (f", worst {worst}" if worst else "") + ".")


def _convert(report: ScanReport, out_dir: Path | None, console: Console) -> list[str]:
    """Convert every clean tensor file; return messages for files that could not be converted."""
    dirty = {f.evidence.get("file") for f in report.at_or_above("low")}
    problems = []
    for scanned in report.files:
        if scanned.format not in CONVERTIBLE:
            continue
        if scanned.path in dirty:
            console.print(f"not converted: {scanned.path} (its scan has findings)")
            continue
        try:
            dest = convert_to_safetensors(scanned, out_dir)
        except BastionError as exc:
            problems.append(str(exc))
            continue
        console.print(f"converted {scanned.path} -> {dest}")
    return problems


def dynamic_findings(paths: list[Path], arch: str | None, data: Path | None, timeout: float | None) -> list:
    """`--dynamic`: what each model file's code tried to do when loaded and run in the sandbox."""
    from bastion.sandbox import SandboxOptions, carries_code

    dataset = load_data(data, None, 16)
    options = SandboxOptions(timeout=timeout if timeout is not None else 120.0, device="cpu")
    findings = []
    for path in paths:
        if path.is_file() and carries_code(str(path), arch):
            result = dynamic_scan(str(path), arch, dataset, options)
            for finding in result.findings:
                finding.evidence["file"] = str(path)
            findings += result.findings
    return findings


def register(app: typer.Typer) -> None:
    @app.command(help="Scan model files (or folders, recursively) for code that runs when they are loaded.")
    def scan(
        paths: list[Path] = typer.Argument(..., help="model files or folders"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
        sarif: Path | None = typer.Option(None, "--sarif", help="also write a SARIF 2.1.0 log to this file"),
        fail_on: str = typer.Option("high", "--fail-on", help="exit 1 at this severity or above (or 'never')"),
        convert: bool = typer.Option(False, "--convert-to-safetensors",
                                     help="write <name>.safetensors for tensor files that scan clean"),
        out_dir: Path | None = typer.Option(None, "--out-dir", help="folder for converted files"),
        manifest: Path | None = typer.Option(None, "--manifest",
                                             help="write a sha256 manifest (JSON, or sha256sum lines for .sha256)"),
        dynamic: bool = typer.Option(False, "--dynamic", help="also load each model in the sandbox, run a forward "
                                     "pass on inputs of its declared shape, and report what its code tried to do"),
        arch: str | None = typer.Option(None, "--arch", help="module:factory (with --dynamic, for .safetensors)"),
        data: Path | None = typer.Option(None, "--data", help="with --dynamic: data giving the input shape when "
                                         "the model does not declare it"),
        timeout: float | None = timeout_option(),
    ) -> None:
        level = fail_on_level(fail_on)
        report = scan_paths(paths)
        if dynamic:
            report.findings.extend(dynamic_findings(paths, arch, data, timeout))
        console = Console(stderr=as_json)
        if sarif is not None:
            write_sarif(report, sarif)
        if manifest is not None:
            write_manifest(report, manifest)
        problems = _convert(report, out_dir, console) if convert else []
        if as_json:
            sys.stdout.write(json.dumps(report.to_dict()) + "\n")
        else:
            _print(report, console)
        for line in report.errors + problems:
            typer.echo(f"error: {line}", err=True)
        if report.errors or problems:
            raise typer.Exit(2)
        worst = report.worst_severity()
        if level is not None and worst is not None and severity_rank(worst) >= level:
            raise typer.Exit(1)
