"""The ``hil`` command group and what its commands share: the global options, one-line errors
(exit status 2), the board opener, and the endings of interrupted or failed commands (with the
exact command that resumes them).

Errors a user can fix (a bad address, a limit violation, a board that does not answer) end the
command with a one-line message and exit status 2, not a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from drivers.address import open_board
from drivers.errors import BoardError
from drivers.limits import SafetyLimits, load_limits
from hil.interruptions import resume_command
from protocols.version import software_version

log = logging.getLogger("hil")


class CliContext:
    """What the group's options give every command (``ctx.obj``)."""

    def __init__(self, limits: SafetyLimits | None):
        self.limits = limits


def fail(message: str) -> None:
    """End the command with ``error: message`` on stderr and exit status 2."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(software_version(), "--version", "-V", prog_name="hil", message="%(prog)s %(version)s")
@click.option("--log-level", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="DEBUG also logs raw wire traffic.")
@click.option("--limits", "limits_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file of safety limits (max_set_v, max_reset_v, max_read_v, compliance_a, ...).")
@click.pass_context
def cli(ctx: click.Context, log_level: str, limits_file: Path | None) -> None:
    """Hardware-in-the-loop stack for memristor crossbar test benches."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = None
    if limits_file is not None:
        try:
            limits = load_limits(limits_file)
        except ValueError as exc:
            fail(str(exc))
    ctx.obj = CliContext(limits)


def open_for(ctx: click.Context, address: str):
    """Open the board at ``address`` under the ``--limits`` of the command line, or fail in one line."""
    try:
        return open_board(address, getattr(ctx.obj, "limits", None))
    except BoardError as exc:
        fail(str(exc))


def stopped(ctx: click.Context, what: str, folder: Path | None = None) -> None:
    """End an interrupted command (Ctrl-C): status 130 and the exact command that resumes it."""
    kept = f"; {folder} is kept" if folder is not None else ""
    click.echo(f"{what}{kept}; resume with: {resume_command(ctx)}", err=True)
    sys.exit(130)


def failed(ctx: click.Context, message: str, resumable: bool) -> None:
    """End a command that a lost link or a full disk stopped: one line, and how to resume if there is anything."""
    fail(f"{message}; resume with: {resume_command(ctx)}" if resumable else message)
