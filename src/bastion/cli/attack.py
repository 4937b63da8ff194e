"""`bastion attack FAMILY NAME MODEL --data DATA [--param value ...]`."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli import catalog
from bastion.cli.common import EXTRA_ARGS, emit, fail_on_level
from bastion.core.errors import BastionError, ParameterError
from bastion.sandbox.cli_jobs import no_sandbox_option, sandboxed_attack, timeout_option
from bastion.sandbox.sandboxed_run import SandboxOptions
from bastion.sandbox.spec import JobSpec

# Family words of earlier releases, still accepted on the command line (JSON and docs use the new ones).
FORMER_NAMES = {"inference": "privacy", "poisoning": "backdoor", "supply-chain": "supply_chain"}


def _module(name: str, family: str) -> str:
    """The module that registers the attack, read from the source (importing the attacks imports PyTorch, which
    this process leaves to the worker); the registry's error for an unknown name."""
    found = [e for e in catalog.entries("attacks") if e.family == family]
    for entry in found:
        if entry.name == name:
            return entry.module
    known = sorted(e.name for e in found)
    raise BastionError(f"unknown {family} attack {name!r}; known: {', '.join(known) or 'none'}")


def register(app: typer.Typer) -> None:
    @app.command(context_settings=EXTRA_ARGS, help="Run one attack against a model. Extra --name value pairs are "
                 "the attack's parameters (see `bastion list attacks`).")
    def attack(
        ctx: typer.Context,
        family: str = typer.Argument(..., help="evasion, backdoor, extraction or privacy"),
        name: str = typer.Argument(..., help="attack name, e.g. pgd"),
        model: str = typer.Argument(..., help="model file or http(s) URL"),
        data: Path | None = typer.Option(None, "--data", help="evaluation data (.npz, .csv, image folder, IDX)"),
        label: str | None = typer.Option(None, "--label", help="label column of CSV data"),
        classes: str | None = typer.Option(None, "--classes", help="class names in the model's order, comma "
                                           "separated (image folders otherwise follow the model's metadata)"),
        arch: str | None = typer.Option(None, "--arch", help="module:factory for .safetensors weights"),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
        seed: int = typer.Option(0, "--seed"),
        n_samples: int | None = typer.Option(None, "--n-samples", help="use only the first N samples"),
        max_queries: int | None = typer.Option(None, "--max-queries", help="query budget of the target"),
        access: str | None = typer.Option(None, "--access", help="restrict to gradients, scores or labels"),
        trust: bool = typer.Option(False, "--trust", help="allow pickle-based files that scanned clean"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
        fail_on: str | None = typer.Option(None, "--fail-on", help="exit 1 at this severity or above"),
        no_sandbox: bool = no_sandbox_option(),
        timeout: float | None = timeout_option(),
    ) -> None:
        family = FORMER_NAMES.get(family, family)
        if family == "availability" and name in ("overgen", "eos-suppress"):  # LM targets: --data holds prompts
            from bastion.cli.llm import run_llm

            fail_on_level(fail_on)
            prompts = ["--prompts", str(data)] if data is not None else []
            return emit(run_llm(name, model, list(ctx.args) + prompts, seed=seed, max_queries=max_queries,
                                trust=trust), as_json, fail_on)
        if family == "llm":  # language models (folder, .gguf, /v1 URL): bastion.cli.llm opens the target
            from bastion.cli.llm import run_llm

            fail_on_level(fail_on)
            return emit(run_llm(name, model, list(ctx.args), seed=seed, max_queries=max_queries, trust=trust),
                        as_json, fail_on)
        if max_queries is not None and max_queries < 1:
            raise ParameterError(f"--max-queries must be at least 1, got {max_queries}")
        fail_on_level(fail_on)
        spec = JobSpec("attacks", name, family, list(ctx.args), {"seed": seed, "arch": arch},
                       data=None if data is None else str(data), label=label, n_samples=n_samples,
                       classes=[c.strip() for c in (classes or "").split(",") if c.strip()])
        load = {"path": model, "arch": arch, "device": device, "trust": trust, "max_queries": max_queries,
                "access": access}
        options = SandboxOptions(enabled=not no_sandbox, timeout=timeout, device=device)

        def locate(job: JobSpec) -> None:  # once the worker has started: reading the source takes ~0.07 s
            job.module = _module(name, family)

        emit(sandboxed_attack(spec, load, options, locate), as_json, fail_on, judged=True)
