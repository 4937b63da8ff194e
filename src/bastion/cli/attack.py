"""`bastion attack FAMILY NAME MODEL --data DATA [--param value ...]`."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli.common import EXTRA_ARGS, build_with_datasets, emit, load_data
from bastion.core import registry
from bastion.core.data import apply_classes
from bastion.core.errors import ParameterError
from bastion.sandbox import SandboxOptions
from bastion.sandbox.commands import no_sandbox_option, path_arguments, sandboxed_attack, timeout_option

# Family words of earlier releases, still accepted on the command line (JSON and docs use the new ones).
FORMER_NAMES = {"inference": "privacy", "poisoning": "backdoor", "supply-chain": "supply_chain"}


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
        if family == "llm":  # LM folders (safetensors only): their own options, until cli/llm.py dispatches them
            from bastion.attacks.llm.commands import run_llm_attack

            return emit(run_llm_attack(name, model, list(ctx.args), seed), as_json, fail_on)
        cls = registry.get("attacks", name, family)
        evaluation = load_data(data, label, n_samples)
        defaults = {"seed": seed, "arch": arch}
        if family == "evasion" and evaluation is not None:  # the norm `assess` would choose for this data
            from bastion.assess.defaults import default_norm

            defaults["norm"] = default_norm(evaluation.x.shape[1:])
        attack_obj, extra_data = build_with_datasets(cls, ctx.args, defaults, label, f"{family} attack '{name}'")
        if classes:
            for dataset in (evaluation, *extra_data.values()):
                if dataset is not None:
                    apply_classes(dataset, [c.strip() for c in classes.split(",") if c.strip()])
        if evaluation is None and not getattr(cls, "dataset_params", ()):
            raise ParameterError(f"{family} attack '{name}' needs --data")
        load = {"path": model, "data": evaluation or next(iter(extra_data.values()), None), "arch": arch,
                "device": device, "trust": trust, "max_queries": max_queries, "access": access}
        options = SandboxOptions(enabled=not no_sandbox, timeout=timeout, device=device)
        result = sandboxed_attack(attack_obj, evaluation, extra_data, load, options, path_arguments(ctx.args))
        emit(result, as_json, fail_on)
