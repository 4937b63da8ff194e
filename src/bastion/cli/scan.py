"""`bastion scan PATH ... [--json | --sarif FILE] [--fail-on high] [--convert-to-safetensors] [--manifest FILE]`.

Exit codes: 0 clean, 1 a finding at or above --fail-on, 2 bad input or a file that could not be scanned,
3 nothing to scan (no files under the paths given)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from bastion.cli.common import fail_on_level, load_data
from bastion.cli.outputs import check_output_file, prepare_output_dir, same_file
from bastion.core.errors import BastionError, ParameterError
from bastion.core.results import Finding, severity_rank
from bastion.sandbox.cli_jobs import dynamic_scan, timeout_option
from bastion.supplychain import CONVERTIBLE, ScanReport, convert_to_safetensors, scan_paths, write_manifest
from bastion.supplychain.convert import is_conversion_of, safetensors_destination
from bastion.supplychain.scan_report import ScannedFile

NOTHING_TO_SCAN = 3

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


def plan_conversions(report: ScanReport, out_dir: Path | None, outputs: list[Path]) -> list[ScannedFile]:
    """The clean tensor files to convert, refused as a whole when two would be written to the same file, or one
    would overwrite a scanned file (other than its own earlier conversion) or another output."""
    dirty = {f.evidence.get("file") for f in report.at_or_above("low")}
    chosen: list[ScannedFile] = []
    taken: dict[Path, str] = {}
    for scanned in report.files:
        if scanned.format not in CONVERTIBLE or scanned.path in dirty:
            continue
        dest = safetensors_destination(scanned, out_dir)
        key = dest.absolute().resolve()
        if key in taken:
            raise ParameterError(f"--convert-to-safetensors: {taken[key]} and {scanned.path} would both be written "
                                 f"to {dest}; convert them with separate --out-dir folders")
        for other in report.files:
            if same_file(dest, other.path) and not is_conversion_of(dest, scanned):
                raise ParameterError(f"--convert-to-safetensors: converting {scanned.path} would overwrite the "
                                     f"scanned file {other.path}; pass --out-dir")
        if any(same_file(dest, out) for out in outputs):
            raise ParameterError(f"--convert-to-safetensors: converting {scanned.path} would overwrite {dest}, "
                                 "an output of this command")
        taken[key] = scanned.path
        chosen.append(scanned)
    return chosen


def _convert(report: ScanReport, chosen: list[ScannedFile], out_dir: Path | None, console: Console) -> list[str]:
    """Convert the planned clean tensor files; return messages for files that could not be converted."""
    problems = []
    for scanned in report.files:
        if scanned.format not in CONVERTIBLE:
            continue
        if scanned not in chosen:
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
            if "probe_error" in result.metrics:  # only the load was observed: say so, never a silent all-clear
                findings.append(Finding(
                    title=f"dynamic analysis incomplete: forward pass not run ({path})", family="supply_chain",
                    severity="info", metric="dynamic-incomplete", evidence={"file": str(path),
                                                                            "reason": result.metrics["probe_error"]},
                    description=f"Only loading was observed: {result.metrics['probe_error']}.",
                    recommendation="Pass --data (inputs of the model's shape) so its forward pass is observed too."))
    return findings


def register(app: typer.Typer) -> None:
    @app.command(help="Scan model files (or folders, recursively) for code that runs when they are loaded. "
                      "Exit codes: 0 clean, 1 a finding at --fail-on or above, 2 bad input, 3 nothing to scan.")
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
        outputs = {option: out for option, out in (("--sarif", sarif), ("--manifest", manifest)) if out is not None}
        for option, out in outputs.items():
            check_output_file(out, paths, option)
            prepare_output_dir(out.parent, [], f"{option} {out}: folder")
        if sarif is not None and manifest is not None and same_file(sarif, manifest):
            raise ParameterError("--sarif and --manifest name the same file")
        if convert and out_dir is not None:
            prepare_output_dir(out_dir, [], "--out-dir")
        report = scan_paths(paths)
        for option, out in outputs.items():  # nor any model file found inside the folders scanned
            check_output_file(out, [f.path for f in report.files if f.format != "unknown"], option)
        chosen = plan_conversions(report, out_dir, list(outputs.values())) if convert else []
        if dynamic:
            report.findings.extend(dynamic_findings(paths, arch, data, timeout))
        console = Console(stderr=as_json)
        try:
            if sarif is not None:
                from bastion.report.sarif import scan_to_sarif, write_sarif  # the one SARIF writer (assess too)

                write_sarif(scan_to_sarif(report), sarif)
            if manifest is not None:
                write_manifest(report, manifest)
        except OSError as exc:
            raise ParameterError(f"cannot write {exc.filename}: {exc.strerror or exc}") from None
        problems = _convert(report, chosen, out_dir, console) if convert else []
        if as_json:
            sys.stdout.write(json.dumps(report.to_dict()) + "\n")
        else:
            _print(report, console)
        for f in report.findings:
            if f.metric == "dynamic-incomplete":
                typer.echo(f"note: {f.description}", err=True)
        for line in report.errors + problems:
            typer.echo(f"error: {line}", err=True)
        if report.errors or problems:
            raise typer.Exit(2)
        if not report.files:
            typer.echo(f"error: nothing to scan: no files under {', '.join(map(str, paths))} "
                       f"(exit code {NOTHING_TO_SCAN})", err=True)
            raise typer.Exit(NOTHING_TO_SCAN)
        worst = report.worst_severity()
        if level is not None and worst is not None and severity_rank(worst) >= level:
            raise typer.Exit(1)
