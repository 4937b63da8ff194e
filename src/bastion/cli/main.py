"""Entry point of the `bastion` command: errors become one line on stderr and exit code 2.

Commands are imported only when they run (their modules import torch, seconds of start-up): `--help`,
`--version` and `list` answer from the table below and from `cli/catalog.py`.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from bastion import __version__
from bastion.core.errors import BastionError
from bastion.core.quiet import quiet_torch_deprecations
from bastion.core.threads import apply_thread_defaults

# Typer may vendor click: nothing here imports click itself.
# command -> (module under bastion.cli that registers it, one-line help shown by `bastion --help`)
COMMANDS = {
    "demo": ("demo", "Assess the embedded demo models (trained on first use, then cached)."),
    "assess": ("assess", "Assess a model against every threat family; write a graded report."),
    "attack": ("attack", "Run one attack against a model (`bastion attack FAMILY NAME --help`)."),
    "defend": ("defend", "Run a defense: detect, repair or harden a model (`bastion defend NAME --help`)."),
    "scan": ("scan", "Scan model files for code that runs when they are loaded."),
    "list": ("listing", "List attacks, defenses and threat families, or one entry's parameters."),
    "report": ("report", "Browse and compare recorded assessments."),
    "guard": ("guard", "Serve a model behind a policy of protective rules; read its audit log."),
}


def load_command(name: str) -> Any:
    """Import the module behind `name` and return its click command."""
    if name not in COMMANDS:
        return None
    holder = typer.Typer(add_completion=False)
    importlib.import_module(f"bastion.cli.{COMMANDS[name][0]}").register(holder)
    holder.callback()(lambda: None)  # a group, so that its commands are looked up by name
    return typer.main.get_command(holder).commands.get(name)  # type: ignore[attr-defined]


class _Commands(dict):
    """The group's command table, filled on first look-up of each name."""

    def __missing__(self, name: str) -> Any:
        command = load_command(name)
        if command is None:
            raise KeyError(name)
        self[name] = command
        return command


class LazyGroup(TyperGroup):
    """A group whose commands are imported when invoked, and whose help comes from `COMMANDS`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _Commands(self.commands)

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        if cmd_name in self.commands or not getattr(ctx, "_bastion_help", False):
            return self.commands[cmd_name]
        # while the group's own help is formatted, a stub with the short help will do
        return TyperCommand(cmd_name, help=COMMANDS[cmd_name][1], short_help=COMMANDS[cmd_name][1])

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        ctx._bastion_help = True  # type: ignore[attr-defined]
        try:
            super().format_help(ctx, formatter)
        finally:
            ctx._bastion_help = False  # type: ignore[attr-defined]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bastion {__version__}")
        raise typer.Exit(0)


app = typer.Typer(
    name="bastion",
    cls=LazyGroup,
    help="Find, measure and mitigate security threats to machine-learning models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                      help="Print the version and exit.")) -> None:
    """Find, measure and mitigate security threats to machine-learning models."""


def _is_usage_error(exc: Exception) -> bool:
    """Click's (or Typer's vendored click's) usage and parameter errors."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return "ClickException" in names and hasattr(exc, "format_message")


def entry_help(argv: list[str]) -> str | None:
    """`attack FAMILY NAME ... --help` / `defend NAME ... --help`: the entry's parameters, else None."""
    if not argv or argv[0] not in ("attack", "defend") or not {"--help", "-h"} & set(argv):
        return None
    words = [w for w in argv[1:] if not w.startswith("-")]
    from bastion.cli import catalog
    from bastion.cli.listing import parameter_help

    if argv[0] == "attack" and len(words) >= 2:
        found = catalog.find(words[1], words[0], ("attacks",))
    elif argv[0] == "defend" and words:
        found = catalog.find(words[0], None, ("defenses",))
    else:
        return None
    if not found:
        return None
    return "\n".join(parameter_help(entry) for entry in found)


def run(argv: list[str] | None = None) -> None:
    """Run the CLI; exit 0 done, 1 a --fail-on threshold was crossed, 2 bad input or usage."""
    argv = sys.argv[1:] if argv is None else argv
    apply_thread_defaults()  # before any command imports PyTorch or NumPy
    quiet_torch_deprecations()
    try:
        extra = entry_help(argv)
        code = app(args=[argv[0], "--help"] if extra else argv, prog_name="bastion", standalone_mode=False)
        if extra:
            typer.echo("\n" + extra)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        code = 2
    except BastionError as exc:
        typer.echo(f"error: {_one_line(exc)}", err=True)
        code = 2
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        code = 130
    except Exception as exc:
        if _is_usage_error(exc):
            typer.echo(f"error: {_one_line(Exception(exc.format_message()))} (see --help)", err=True)
        elif os.environ.get("BASTION_DEBUG"):
            raise
        else:  # a bug of ours: still one line
            typer.echo(f"error: internal error: {type(exc).__name__}: {_one_line(exc)} "
                       "(set BASTION_DEBUG=1 for the traceback)", err=True)
        code = 2
    sys.exit(code if isinstance(code, int) else 0)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


if __name__ == "__main__":
    run()
