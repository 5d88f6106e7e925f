"""The ``hil`` command line: serve the emulator, inspect and benchmark boards.

Errors a user can fix (a bad address, a limit violation, a board that does not
answer) end the command with a one-line message and exit status 2, not a traceback.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

import click

from drivers.address import open_board
from drivers.errors import BoardError
from drivers.limits import SafetyLimits, load_limits

log = logging.getLogger("hil")


class _Context:
    def __init__(self, limits: SafetyLimits | None):
        self.limits = limits


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
            _fail(str(exc))
    ctx.obj = _Context(limits)


def _open(ctx: click.Context, address: str):
    try:
        return open_board(address, ctx.obj.limits)
    except BoardError as exc:
        _fail(str(exc))


@cli.command()
@click.option("--board", "address", required=True, help="Board address, e.g. emu, serial:/dev/ttyUSB0.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def info(ctx: click.Context, address: str, as_json: bool) -> None:
    """Identity, geometry, capabilities and limits of a board."""
    try:
        with _open(ctx, address) as board:
            data = {"address": address, "info": board.info.model_dump(mode="json"),
                    "effective_limits": board.limits.model_dump(), "status": board.status().model_dump()}
    except BoardError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    i = data["info"]
    click.echo(f"board        {address}")
    click.echo(f"identity     {i['name']} (serial {i['serial_number']}), kind {i['kind']}")
    click.echo(f"firmware     {i['firmware_version']}, protocol v{i['protocol_version']}")
    click.echo(f"geometry     {i['rows']} x {i['cols']} devices")
    caps = [k for k, v in i["capabilities"].items() if v]
    click.echo(f"capabilities {', '.join(caps) or 'none'}")
    click.echo(f"read         {i['read_voltage_v']} V, LSB {i['g_lsb_s']:.3g} S, full scale {i['g_full_scale_s']:.3g} S")
    click.echo(f"converters   DAC {i['dac_bits']} bit (+-{i['dac_full_scale_v']} V), ADC {i['adc_bits']} bit")
    click.echo("limits       " + ", ".join(f"{k}={v:g}" for k, v in data["effective_limits"].items()))
    click.echo(f"clock        {data['status']['clock_s']:.6g} s")


@cli.command()
@click.option("--board", "address", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--quick", is_flag=True, help="Shorter measurements (noisier figures).")
@click.pass_context
def bench(ctx: click.Context, address: str, as_json: bool, quick: bool) -> None:
    """Link and emulator figures: array model speed, bytes on the wire, round trips."""
    from hil.bench import run_bench

    try:
        with _open(ctx, address) as board:
            report = run_bench(address, board, quick=quick)
    except BoardError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return
    for key, value in report.model_dump().items():
        click.echo(f"{key:36s} {value}")


@cli.group()
def emulator() -> None:
    """Serve the firmware emulator."""


@emulator.command()
@click.option("--pty", "use_pty", is_flag=True, help="Serve on a new pseudo-terminal; prints its path.")
@click.option("--tcp", "tcp", metavar="HOST:PORT", help="Serve on a TCP port (PORT 0 picks a free one).")
@click.option("--rows", default=128, show_default=True, type=click.IntRange(1, 4096))
@click.option("--cols", default=128, show_default=True, type=click.IntRange(1, 4096))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML file of device parameters (see DeviceParams).")
def serve(use_pty: bool, tcp: str | None, rows: int, cols: int, seed: int, config: Path | None) -> None:
    """Serve the FPGA firmware emulator until stopped (Ctrl-C or SIGTERM)."""
    from firmware_stub.device_params import load_device_params
    from firmware_stub.firmware import make_emulator
    from firmware_stub.serve import PtyServer, TcpServer

    if use_pty == bool(tcp):
        _fail("give exactly one of --pty or --tcp HOST:PORT")
    try:
        params = load_device_params(config)
    except ValueError as exc:
        _fail(str(exc))
    endpoint = make_emulator(rows, cols, seed, params)
    if use_pty:
        server = PtyServer(endpoint)
        address = f"serial:{server.path}"
    else:
        host, _, port = tcp.rpartition(":")
        if not host or not port.isdigit():
            _fail(f"--tcp expects HOST:PORT, got {tcp!r}")
        try:
            server = TcpServer(endpoint, host, int(port))
        except OSError as exc:
            _fail(f"cannot listen on {tcp}: {exc}")
        address = f"serial:{server.url}"
    signal.signal(signal.SIGTERM, lambda *_: server.stop.set())
    click.echo(f"emulator {rows}x{cols} seed {seed} serving at {address}", err=True)
    click.echo(address)
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop.set()
    click.echo("emulator stopped", err=True)


def main() -> None:
    cli(prog_name="hil")


if __name__ == "__main__":
    main()
