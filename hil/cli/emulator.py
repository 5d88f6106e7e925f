"""``hil emulator serve`` and ``hil emulator serve-bench``: the emulated FPGA board on a pty or TCP,
and the emulated VISA bench (2450 SMU, 33500B generator, 707B matrix) with its bench file.

One of the two doors from above into ``firmware_stub`` (docs/DESIGN.md, Layers): these commands
serve the emulators, so they build them.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from hil.cli.app import cli, fail


@cli.group()
def emulator() -> None:
    """Serve the firmware emulator."""


@emulator.command()
@click.option("--pty", "use_pty", is_flag=True, help="Serve on a new pseudo-terminal; prints its path.")
@click.option("--tcp", "tcp", metavar="HOST:PORT", help="Serve on a TCP port (PORT 0 picks a free one).")
@click.option("--rows", default=128, show_default=True, type=click.IntRange(1, 4096))
@click.option("--cols", default=128, show_default=True, type=click.IntRange(1, 4096))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--preset", default="default", show_default=True,
              help="Device preset shipped with the package (default, noisy2x, paper).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML file of device parameters (see DeviceParams); overrides the preset's fields.")
def serve(use_pty: bool, tcp: str | None, rows: int, cols: int, seed: int, preset: str, config: Path | None) -> None:
    """Serve the FPGA firmware emulator until stopped (Ctrl-C or SIGTERM)."""
    from firmware_stub.device_params import load_device_params
    from firmware_stub.firmware import make_emulator
    from firmware_stub.serve import PtyServer, TcpServer

    if use_pty == bool(tcp):
        fail("give exactly one of --pty or --tcp HOST:PORT")
    try:
        params = load_device_params(config, preset)
    except ValueError as exc:
        fail(str(exc))
    endpoint = make_emulator(rows, cols, seed, params, preset=preset, config=None if config is None else str(config))
    if use_pty:
        server = PtyServer(endpoint)
        address = f"serial:{server.path}"
    else:
        host, _, port = tcp.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            fail(f"--tcp expects HOST:PORT with PORT in 0..65535 (0: any free port), got {tcp!r}")
        try:
            server = TcpServer(endpoint, host, int(port))
        except OSError as exc:
            fail(f"cannot listen on {tcp}: {exc}")
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


@emulator.command("serve-bench")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Bench file to write (TOML); open the bench as visa:OUT.")
@click.option("--rows", default=8, show_default=True, type=click.IntRange(1, 64), help="Array word lines.")
@click.option("--cols", default=8, show_default=True, type=click.IntRange(1, 64), help="Array bit lines.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML file of device parameters (see DeviceParams).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the instruments listen on.")
@click.option("--wall-clock", is_flag=True,
              help="The array clock follows real time (bench file: virtual_clock = false; the host sleeps).")
def serve_bench(out: Path, rows: int, cols: int, seed: int, config: Path | None, host: str,
                        wall_clock: bool) -> None:
    """Serve the emulated VISA bench (2450 SMU, 33500B generator, 707B matrix) and write its bench file."""
    from firmware_stub.device_params import load_device_params
    from firmware_stub.scpi.serve_bench import serve_until_stopped, start_bench

    try:
        params = load_device_params(config)
        running = start_bench(rows, cols, seed, params, host=host, clock_mode="wall" if wall_clock else "virtual")
    except (ValueError, OSError) as exc:
        fail(str(exc))
    try:
        path = running.write_bench_file(out)
    except OSError as exc:
        running.stop()
        fail(f"cannot write {out}: {exc}")
    click.echo(f"emulated bench {rows}x{cols} seed {seed} ({'wall' if wall_clock else 'virtual'} clock): "
               + ", ".join(f"{k} at {v}" for k, v in running.resources.items()), err=True)
    click.echo(str(path))
    sys.stdout.flush()
    serve_until_stopped(running)
    click.echo("emulated bench stopped", err=True)
