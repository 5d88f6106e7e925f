"""``hil emulator serve-bench``: the click command (the lead registers it under ``hil emulator``).

    from drivers.visa_cli import serve_bench_command
    emulator.add_command(serve_bench_command)        # in hil/cli.py

It starts the SCPI/TSP instrument emulators of :mod:`firmware_stub.scpi` on TCP,
writes the matching bench file, prints its path on stdout (one line, then flushes,
so a script can read it) and serves until Ctrl-C or SIGTERM.  Then, in another
process: ``hil info --board visa:BENCH.toml``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("serve-bench")
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
def serve_bench_command(out: Path, rows: int, cols: int, seed: int, config: Path | None, host: str,
                        wall_clock: bool) -> None:
    """Serve the emulated VISA bench (2450 SMU, 33500B generator, 707B matrix) and write its bench file."""
    from firmware_stub.device_params import load_device_params
    from firmware_stub.scpi.serve_bench import serve_until_stopped, start_bench

    def fail(message: str) -> None:
        click.echo(f"error: {message}", err=True)
        sys.exit(2)

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
