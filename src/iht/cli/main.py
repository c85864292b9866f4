"""The ``iht`` group, its commands, and the one place errors become one line and an exit code."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

import click

from .. import __version__
from ..errors import IhtError, Terminated
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
    error (one line on stderr); 130: interrupted (Ctrl-C); 128 + N: stopped by signal N
    (SIGTERM: 143, SIGHUP: 129), with what was finished kept.
    """
    try:
        with _stop_signals_interrupt():
            cli.main(args=argv, prog_name="iht", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort as exc:
        # click turns a KeyboardInterrupt (Terminated included) into Abort, keeping the cause
        if isinstance(exc.__cause__, Terminated):
            return _stopped(exc.__cause__)
        message = "iht: aborted"
        if isinstance(exc.__cause__, KeyboardInterrupt):
            message = "iht: interrupted; what was finished is kept, run the same command to resume"
        click.echo(message, err=True)
        return 130
    except click.ClickException as exc:
        return _error(exc.format_message())
    except Terminated as exc:
        return _stopped(exc)
    except KeyboardInterrupt:
        click.echo(
            "iht: interrupted; what was finished is kept, run the same command to resume", err=True
        )
        return 130
    except IhtError as exc:
        return _error(str(exc))
    return 0


def _stopped(exc: Terminated) -> int:
    click.echo(
        f"iht: stopped by {exc.signal_name}; what was finished is kept, run the same command "
        "to resume",
        err=True,
    )
    return 128 + exc.signal_number


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`~iht.errors.Terminated` (a KeyboardInterrupt) while a
    command runs, so they stop it as Ctrl-C does: cleanly, what is finished kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = [name for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]

    def stop(number: int, frame: FrameType | None) -> None:
        raise Terminated(signal.Signals(number).name, number)

    previous = {name: signal.signal(getattr(signal, name), stop) for name in names}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def run() -> None:
    """Console-script wrapper: exit with :func:`main`'s code."""
    sys.exit(main())


if __name__ == "__main__":
    run()
