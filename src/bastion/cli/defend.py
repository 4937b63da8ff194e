"""`bastion defend NAME MODEL [--data DATA] [--train-data DATA] [--out NEW_MODEL] [--param value ...]`."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli.common import EXTRA_ARGS, build_with_datasets, emit, load_data
from bastion.cli.outputs import check_output_file
from bastion.core import registry
from bastion.sandbox import SandboxOptions
from bastion.sandbox.commands import no_sandbox_option, path_arguments, sandboxed_defense, timeout_option


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
        cls = registry.get("defenses", name)
        if out is not None:
            check_output_file(out, [model, data, train_data, *path_arguments(ctx.args)], "--out")
        defense, datasets = build_with_datasets(cls, ctx.args, {"seed": seed, "arch": arch}, label,
                                                f"defense '{name}'")
        evaluation = load_data(data, label, n_samples)
        training = load_data(train_data, label, None, "train data")
        if training is not None:
            datasets["train_data"] = training
        load = {"path": model, "data": evaluation or training, "arch": arch, "device": device, "trust": trust}
        options = SandboxOptions(enabled=not no_sandbox, timeout=timeout, device=device)
        result = sandboxed_defense(defense, evaluation, datasets, load, options, path_arguments(ctx.args), name, out)
        emit(result, as_json, fail_on)
