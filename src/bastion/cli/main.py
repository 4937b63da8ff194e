"""Entry point of the `bastion` command: errors become one line on stderr and exit code 2."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import typer

from bastion.cli.common import one_line
from bastion.core.errors import BastionError

COMMAND_MODULES = ("demo", "assess", "attack", "defend", "scan", "report", "listing")

app = typer.Typer(
    name="bastion",
    help="Find, measure and mitigate security threats to machine-learning models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _name in COMMAND_MODULES:
    if importlib.util.find_spec(f"bastion.cli.{_name}") is not None:
        importlib.import_module(f"bastion.cli.{_name}").register(app)


def _is_usage_error(exc: Exception) -> bool:
    """Click's (or Typer's vendored click's) usage and parameter errors."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return "ClickException" in names and hasattr(exc, "format_message")


def run(argv: list[str] | None = None) -> None:
    """Run the CLI; exit 0 done, 1 a --fail-on threshold was crossed, 2 bad input or usage."""
    try:
        code = app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        code = 2
    except BastionError as exc:
        typer.echo(f"error: {one_line(exc)}", err=True)
        code = 2
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        code = 130
    except Exception as exc:
        if _is_usage_error(exc):
            typer.echo(f"error: {one_line(Exception(exc.format_message()))} (see --help)", err=True)
        elif os.environ.get("BASTION_DEBUG"):
            raise
        else:  # a bug of ours: still one line
            typer.echo(f"error: internal error: {type(exc).__name__}: {one_line(exc)} "
                       "(set BASTION_DEBUG=1 for the traceback)", err=True)
        code = 2
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()
