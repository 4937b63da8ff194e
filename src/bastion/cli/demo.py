"""`bastion demo`: train (once) and assess the embedded demo models."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli.common import check_seed
from bastion.cli.outputs import prepare_output_dir
from bastion.demo.run import run_demo


def register(app: typer.Typer) -> None:
    @app.command(help="Assess the embedded demo models (trained on first use, then cached).")
    def demo(
        out: Path = typer.Option(Path("bastion-report"), "--out", help="report folder"),
        seed: int = typer.Option(0, "--seed"),
        device: str = typer.Option("auto", "--device"),
    ) -> None:
        check_seed(seed)
        prepare_output_dir(out, [])
        run_demo(out=out, seed=seed, device=device)
