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
from hil.update_rules import RULES
from hil.interruptions import resume_command, sigint_guard

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
            eff = board.effective_limits
            data = {"address": address, "info": board.info.model_dump(mode="json"),
                    "effective_limits": eff.limits.model_dump(), "limit_sources": dict(eff.sources),
                    "limits_refused": {k: {"asked": a, "used": u} for k, (a, u) in eff.refused.items()},
                    "status": board.status().model_dump()}
    except BoardError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    i = data["info"]
    click.echo(f"board        {address}")
    click.echo(f"identity     {i['name']} (serial {i['serial_number']}), kind {i['kind']}")
    click.echo(f"firmware     {i['firmware_version']}, protocol v{i['protocol_version']}")
    if i.get("device_preset"):
        override = f", fields overridden by {i['device_config']}" if i.get("device_config") else ""
        click.echo(f"device       preset {i['device_preset']}{override}")
    click.echo(f"geometry     {i['rows']} x {i['cols']} devices")
    caps = [k for k, v in i["capabilities"].items() if v]
    click.echo(f"capabilities {', '.join(caps) or 'none'}")
    click.echo(f"read         {i['read_voltage_v']} V, LSB {i['g_lsb_s']:.3g} S, full scale {i['g_full_scale_s']:.3g} S")
    if i["capabilities"]["vmm"]:
        click.echo(f"converters   DAC {i['dac_bits']} bit (+-{i['dac_full_scale_v']} V), ADC {i['adc_bits']} bit")
    click.echo("limits       effective value, set by (user: --limits file, default: built-in user default, "
               "hardware: the board)")
    hw = i["hardware_limits"]
    for k, v in data["effective_limits"].items():
        src = data["limit_sources"][k]
        note = f"  (hardware allows {hw[k]:g})" if src != "hardware" and hw[k] != v else ""
        if k in data["limits_refused"]:
            note = f"  (--limits asked {data['limits_refused'][k]['asked']:g}: beyond the hardware, not used)"
        click.echo(f"  {k:22s} {v:<10g} {src}{note}")
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


TRAIN_OPTIONS = ("task", "method", "epochs", "seed", "calibration", "batch_size", "lr", "hidden",
                 "optimizer", "k", "allow_foreign_calibration")


def _stopped(ctx: click.Context, what: str, folder: Path | None = None) -> None:
    """End an interrupted command (Ctrl-C): status 130 and the exact command that resumes it."""
    kept = f"; {folder} is kept" if folder is not None else ""
    click.echo(f"{what}{kept}; resume with: {resume_command(ctx)}", err=True)
    sys.exit(130)


def _failed(ctx: click.Context, message: str, resumable: bool) -> None:
    """End a command that a lost link or a full disk stopped: one line, and how to resume if there is anything."""
    _fail(f"{message}; resume with: {resume_command(ctx)}" if resumable else message)


@cli.command()
@click.option("--board", "address", default="emu", show_default=True,
              help="Board address (unused by --method float). With --resume: any address of the run's board.")
@click.option("--task", type=click.Choice(["digits", "digits-small", "denoise", "superres"]), default="digits",
              show_default=True, help="digits-small: 4x4 pooled digits, for small benches.")
@click.option("--method", type=click.Choice(list(RULES)), default="eapu", show_default=True,
              help="bp: every update written as asked (whole pulses + one width-modulated pulse); "
                   "bp-pulses: every update rounded to whole pulses (at least one).")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False),
              help="calibration.json to use; without it the board is calibrated first.")
@click.option("--allow-foreign-calibration", is_flag=True,
              help="Accept a --calibration measured on another board (recorded in the run).")
@click.option("--batch-size", type=click.IntRange(1), default=None)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--hidden", default=None, help="Hidden layer sizes, e.g. 32 or 64,32.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default=None)
@click.option("--k", type=click.FloatRange(min=0, min_open=True), default=None, help="EaPU threshold factor k.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out (or start it again if it "
                                             "stopped before its first checkpoint).")
@click.option("--assume-applied/--assume-not-applied", "assume_applied", default=None,
              help="With --resume on a board without durable pulse tags (VISA), when the read-back cannot tell: "
                   "the pulses of the interrupted step did (not) reach the devices.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def train(ctx: click.Context, address, task, method, epochs, seed, out_dir, calibration, allow_foreign_calibration,
          batch_size, lr, hidden, optimizer, k, resume, assume_applied, quiet) -> None:
    """Train a network on the array (or digitally, --method float); writes the run directory."""
    from pydantic import ValidationError

    from hil.exactly_once import UndecidedBatch
    from hil.train import Interrupted, TrainConfig, load_config_for_resume
    from hil.train import train as run_training

    try:
        sizes = None if hidden is None else [int(h) for h in str(hidden).split(",") if h.strip()]
    except ValueError:
        _fail(f"--hidden expects layer sizes like 32 or 64,32; got {hidden!r}")
    values = {"board": address, "task": task, "method": method, "epochs": epochs, "seed": seed,
              "calibration": calibration, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
              "delta_g_th_k": k, "hidden": sizes, "allow_foreign_calibration": allow_foreign_calibration or None}
    typed = {n for n in (*TRAIN_OPTIONS, "address")
             if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE}
    started = (out_dir / "config.json").exists()
    if assume_applied is not None and not resume:
        _fail("--assume-applied / --assume-not-applied only apply to --resume (the pending step of an interrupted run)")
    try:
        with sigint_guard():
            if resume:
                cfg = load_config_for_resume(out_dir, board=address if "address" in typed else None)
                field = {"k": "delta_g_th_k"}
                changed = [n for n in typed - {"address"} if values.get(field.get(n, n)) not in
                           (None, getattr(cfg, field.get(n, n)))]
                if changed:
                    _fail(f"--resume continues the run as configured in {out_dir}/config.json; "
                          f"drop or correct {', '.join('--' + c.replace('_', '-') for c in sorted(changed))}")
            else:
                if started and (out_dir / "summary.json").exists():
                    _fail(f"{out_dir} holds a finished run: choose another --out")
                if started:
                    again = resume_command(ctx, keep={"out_dir", "address", "quiet"})
                    _fail(f"{out_dir} holds an interrupted run: continue it with: {again} (or choose another --out)")
                cfg = TrainConfig(**{key: v for key, v in values.items() if v is not None})
            summary = run_training(cfg, out_dir, resume=resume, progress=not quiet, limits=ctx.obj.limits,
                                   assume_applied=assume_applied)
    except Interrupted as exc:
        _stopped(ctx, str(exc), out_dir)
    except KeyboardInterrupt:
        _stopped(ctx, "interrupted", out_dir if (out_dir / "config.json").exists() else None)
    except BoardError as exc:
        _failed(ctx, str(exc), (out_dir / "config.json").exists())
    except UndecidedBatch as exc:
        _fail(f"{exc}: {resume_command(ctx)} --assume-applied (or --assume-not-applied)")
    except (ValueError, ValidationError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _failed(ctx, f"cannot write the run directory {out_dir}: {exc}", (out_dir / "config.json").exists())
    click.echo(json.dumps({k: v for k, v in summary.items()}, indent=2))


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the groups and ratios as JSON.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the figures (default: the runs' common parent folder).")
@click.option("--overwrite", is_flag=True, help="Replace figures that already exist.")
@click.option("--no-plot", is_flag=True, help="Only the table.")
def compare(run_dirs, as_json: bool, out_dir: Path | None, overwrite: bool, no_plot: bool) -> None:
    """Group finished runs by task x method x board settings: mean ± 95 % CI over seeds, gaps, ratios."""
    import os

    from hil import compare as cmp
    from hil.plots import plot_comparison

    try:
        groups, ratios = cmp.compare(list(run_dirs))
    except ValueError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(cmp.to_json(groups, ratios), indent=2))
    else:
        click.echo(cmp.table(groups, ratios))
    if no_plot:
        return
    target = out_dir or Path(os.path.commonpath([str(Path(d).resolve().parent) for d in run_dirs]))
    try:
        target.mkdir(parents=True, exist_ok=True)
        paths = plot_comparison(groups, target, overwrite=overwrite)
    except FileExistsError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write the figures to {target}: {exc}")
    for p in paths:
        click.echo(f"plot: {p}", err=as_json)


@cli.command()
@click.option("--board", "address", default="emu", show_default=True,
              help="Board address; an emulator gets its own board seed per seed (emu?seed=S).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-run"),
              show_default=True)
@click.option("--task", type=click.Choice(["digits", "digits-small"]), default="digits", show_default=True,
              help="digits-small fits small boards (e.g. 32x96).")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--seeds", "seeds_text", default="5", show_default=True,
              help="A count (5: seeds 0-4) or a list of seeds (0-9, 3,7,11).")
@click.option("--resume", is_flag=True, help="Continue an interrupted demo in --out: finished parts are kept, "
                                             "the interrupted one resumes.")
@click.option("--quiet", is_flag=True)
@click.pass_context
def demo(ctx: click.Context, address: str, out_dir: Path, task: str, epochs: int, seeds_text: str, resume: bool,
         quiet: bool) -> None:
    """Per seed: calibrate, train float, bp and eapu; then compare them over the seeds."""
    from hil import compare as cmp
    from hil.demo import DemoPlan, parse_seeds, run_demo
    from hil.plots import plot_comparison
    from hil.train import Interrupted

    try:
        seeds = parse_seeds(seeds_text)
    except ValueError as exc:
        _fail(str(exc))
    if out_dir.exists() and any(out_dir.iterdir()) and not resume:
        _fail(f"{out_dir} holds a demo already: continue it with: {resume_command(ctx)} (or choose another --out)")
    plan = DemoPlan(address, out_dir, tuple(seeds), epochs, task)
    try:
        with sigint_guard():
            dirs = run_demo(plan, limits=ctx.obj.limits, progress=not quiet, echo=click.echo)
        groups, ratios = cmp.compare(dirs)
    except Interrupted as exc:
        _stopped(ctx, str(exc), out_dir)
    except KeyboardInterrupt:
        _stopped(ctx, "interrupted", out_dir)
    except (BoardError, OSError) as exc:
        _failed(ctx, str(exc), True)
    except ValueError as exc:
        _fail(str(exc))
    click.echo(cmp.table(groups, ratios))
    for path in plot_comparison(groups, out_dir, overwrite=True):
        click.echo(f"plot: {path}")


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Sweep folder: sweep.json, runs/POINT/ (ordinary run folders), calibrations/, the table and figures.")
@click.option("--address", default=None,
              help="Ray cluster to run on (auto, HOST:6379, ray://HOST:10001); default: an embedded local Ray.")
@click.option("--num-cpus", type=click.IntRange(1), default=None,
              help="CPUs of the embedded local Ray (default: the machine's).")
@click.option("--resume", is_flag=True, help="Continue the sweep in --out: finished points are kept, interrupted "
                                             "ones resume from their checkpoints, failed ones run again.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def sweep(ctx: click.Context, spec: Path, out_dir: Path, address: str | None, num_cpus: int | None, resume: bool,
          quiet: bool) -> None:
    """Run the points of a sweep SPEC (TOML: base settings and axes) on Ray; then compare them (docs/SWEEPS.md).

    With a [tune] table: choose among the axes' combinations on tuning seeds, then run the chosen one on
    evaluation seeds (DIR/tune.json, DIR/tune.md)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        _fail("hil sweep runs on Ray: pip install 'memristor-hil[sweep]' (or pip install ray)")
    from hil.sweep_engine import SweepError, run_sweep
    from hil.sweep_report import load_sweep, write_report
    from hil.sweep_spec import SpecError

    try:
        with sigint_guard():
            result = run_sweep(spec, out_dir, address=address, resume=resume, num_cpus=num_cpus,
                               limits=ctx.obj.limits, progress=not quiet, echo=lambda t: click.echo(t, err=True))
    except KeyboardInterrupt:
        _stopped(ctx, "interrupted", out_dir if (out_dir / "sweep.json").exists() else None)
    except (SpecError, SweepError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _failed(ctx, f"cannot write the sweep folder {out_dir}: {exc}", (out_dir / "sweep.json").exists())
    try:
        text, paths = write_report(result.out_dir, load_sweep(result.out_dir))
    except (ValueError, OSError) as exc:
        _fail(f"the points ran, but their comparison failed: {exc}")
    click.echo(text)
    for path in paths:
        click.echo(f"plot: {path}")
    if result.failed:
        _fail(f"{len(result.failed)} of {len(result.failed) + len(result.done)} points failed (errors in "
              f"{result.out_dir / 'sweep.json'}); run them again with: {resume_command(ctx)}")


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
        _fail("give exactly one of --pty or --tcp HOST:PORT")
    try:
        params = load_device_params(config, preset)
    except ValueError as exc:
        _fail(str(exc))
    endpoint = make_emulator(rows, cols, seed, params, preset=preset, config=None if config is None else str(config))
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


from calibration.cli import calibrate_cmd, characterize_group  # noqa: E402
from drivers.visa_cli import serve_bench_command  # noqa: E402

emulator.add_command(serve_bench_command)
cli.add_command(calibrate_cmd)
cli.add_command(characterize_group)


def main() -> None:
    cli(prog_name="hil")


if __name__ == "__main__":
    main()
