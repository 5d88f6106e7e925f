"""The ``hil`` command line: one module per command group, all registered on :data:`hil.cli.app.cli`.

``hil`` (the console script) and ``python -m hil.cli`` run :func:`main`.
"""

from __future__ import annotations

import sys

import click

from hil.cli import bench, calibrate, compare, demo, emulator, info, sweep, train  # noqa: F401  (registration)
from hil.blas_threads import limit_blas_threads
from hil.cli.app import cli

__all__ = ["cli", "main"]


def main() -> None:
    """The ``hil`` entry point: click's usage errors too end in one ``error:`` line (status 2)."""
    try:
        limit_blas_threads()
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    try:
        code = cli.main(prog_name="hil", standalone_mode=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "hil"
        click.echo(f"error: {exc.format_message()} (see {where} --help)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
