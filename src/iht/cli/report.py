"""``iht report DIR``: redraw the report of a study, a train run or a comparison."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["report_command"]


@click.command("report")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def report_command(directory: Path) -> None:
    """Redraw the report in DIRECTORY from its stored files only.

    DIRECTORY is a study (iht reproduce; with the oracle's figure when iht oracle ran on it),
    an iht train run or an iht compare run.
    """
    from ..report.redraw import redraw

    click.echo(f"report: {redraw(directory)}", err=True)
