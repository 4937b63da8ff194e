"""`bastion defend NAME MODEL [--data DATA] [--train-data DATA] [--out NEW_MODEL] [--param value ...]`."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli import catalog
from bastion.cli.common import EXTRA_ARGS, emit, fail_on_level
from bastion.cli.outputs import check_output_file
from bastion.core.errors import BastionError
from bastion.sandbox.cli_jobs import no_sandbox_option, path_arguments, sandboxed_defense, timeout_option
from bastion.sandbox.sandboxed_run import SandboxOptions
from bastion.sandbox.spec import JobSpec


def _entry(name: str) -> catalog.Entry:
    """The defense's registry entry, read from the source (without importing PyTorch here); the registry's error
    for an unknown name."""
    found = [e for e in catalog.entries("defenses") if e.name == name]
    if len(found) != 1:
        known = sorted(e.name for e in catalog.entries("defenses"))
        raise BastionError(f"unknown defense {name!r}; known: {', '.join(known) or 'none'}")
    return found[0]


def register(app: typer.Typer) -> None:
    @app.command(context_settings=EXTRA_ARGS, help="Run a defense: detect, repair or harden a model. Extra "
                 "--name value pairs are the defense's parameters (see `bastion list defenses`).")
    def defend(
        ctx: typer.Context,
        name: str = typer.Argument(..., help="defense name, e.g. neural-cleanse"),
        model: str = typer.Argument(..., help="model file or http(s) URL"),
        data: Path | None = typer.Option(None, "--data", help="evaluation / clean data"),
        train_data: Path | None = typer.Option(None, "--train-data", help="training data"),
        out: Path | None = typer.Option(None, "--out", help="defended model, or screened data (.npz)"),
        label: str | None = typer.Option(None, "--label"),
        arch: str | None = typer.Option(None, "--arch"),
        device: str = typer.Option("auto", "--device"),
        seed: int = typer.Option(0, "--seed"),
        n_samples: int | None = typer.Option(None, "--n-samples"),
        trust: bool = typer.Option(False, "--trust"),
        as_json: bool = typer.Option(False, "--json"),
        fail_on: str | None = typer.Option(None, "--fail-on"),
        no_sandbox: bool = no_sandbox_option(),
        timeout: float | None = timeout_option(),
    ) -> None:
        fail_on_level(fail_on)
        if name in ("generation-cap", "generation-deadline"):  # an LM (folder, .gguf, /v1 URL); --data: prompts
            from bastion.cli.llm import run_llm

            prompts = ["--prompts", str(data)] if data is not None else []
            return emit(run_llm(name, model, list(ctx.args) + prompts, seed=seed, trust=trust), as_json, fail_on)
        entry = _entry(name)
        if out is not None:
            check_output_file(out, [model, data, train_data, *path_arguments(ctx.args)], "--out")
        spec = JobSpec("defenses", name, entry.family or None, list(ctx.args), {"seed": seed, "arch": arch},
                       data=None if data is None else str(data),
                       train_data=None if train_data is None else str(train_data), label=label, n_samples=n_samples,
                       module=entry.module)
        load = {"path": model, "arch": arch, "device": device, "trust": trust}
        options = SandboxOptions(enabled=not no_sandbox, timeout=timeout, device=device)
        emit(sandboxed_defense(spec, load, options, out), as_json, fail_on, judged=True)
