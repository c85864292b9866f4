"""The ``iht`` group, its commands, and the one place errors become one line and an exit code."""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import IhtError
from .compare import compare_command
from .oracle import oracle_command
from .report import report_command
from .reproduce import reproduce_command
from .train import train_command

__all__ = ["cli", "main", "run"]


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    invoke_without_command=True,
    no_args_is_help=False,
)
@click.version_option(version=__version__, prog_name="iht")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Train sparse neural networks with Iterative Hard Thresholding (IHT)."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


for command in (reproduce_command, report_command, train_command, compare_command, oracle_command):
    cli.add_command(command)


def _error(message: str) -> int:
    """Print ``iht: error: message`` on one line to stderr; return the exit code 2."""
    click.echo(f"iht: error: {' '.join(message.split())}", err=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``iht`` console script; returns the exit code.

    0: done; 1: a command's own failure verdict (``iht oracle`` finding a bug); 2: a user
    error (one line on stderr); 130: interrupted.
    """
    try:
        cli.main(args=argv, prog_name="iht", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("iht: aborted", err=True)
        return 130
    except click.ClickException as exc:
        return _error(exc.format_message())
    except KeyboardInterrupt:
        click.echo(
            "iht: interrupted; what was finished is kept, run the same command to resume", err=True
        )
        return 130
    except IhtError as exc:
        return _error(str(exc))
    return 0


def run() -> None:
    """Console-script wrapper: exit with :func:`main`'s code."""
    sys.exit(main())


if __name__ == "__main__":
    run()
