"""``hil calibrate`` and ``hil characterize PROCEDURE``: measure a board.

They follow ``hil``'s conventions: the safety limits come from ``ctx.obj.limits``
(``hil --limits FILE``), boards are opened with :func:`hil.cli.app.open_for`, and errors
a user can fix end with a one-line ``error: ...`` on stderr and exit status 2.  Ctrl-C
during a calibration keeps the finished stages in ``DIR/calibration.h5`` (exit status
130); ``--resume`` continues from them.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click
import numpy as np

from drivers.errors import BoardError
from drivers.limits import PulseProfile, validation_summary
from hil.cli.app import cli, fail, open_for

log = logging.getLogger("hil.calibration")


def _profiles(set_amplitude, set_width, reset_amplitude, reset_width):
    """Optional SET / RESET profiles from the command-line options (None: the board's current)."""
    from drivers.limits import DEFAULT_RESET, DEFAULT_SET

    set_p = reset_p = None
    if set_amplitude is not None or set_width is not None:
        set_p = PulseProfile(amplitude_v=DEFAULT_SET.amplitude_v if set_amplitude is None else set_amplitude,
                             width_sec=DEFAULT_SET.width_sec if set_width is None else set_width)
    if reset_amplitude is not None or reset_width is not None:
        reset_p = PulseProfile(amplitude_v=DEFAULT_RESET.amplitude_v if reset_amplitude is None else reset_amplitude,
                               width_sec=DEFAULT_RESET.width_sec if reset_width is None else reset_width)
    return set_p, reset_p


def _profile_options(f):
    for opt in reversed([
        click.option("--set-amplitude", type=float, help="SET pulse amplitude, volts (default: the board's profile)."),
        click.option("--set-width", type=float, help="SET pulse width, seconds."),
        click.option("--reset-amplitude", type=float, help="RESET pulse amplitude, volts (negative)."),
        click.option("--reset-width", type=float, help="RESET pulse width, seconds."),
    ]):
        f = opt(f)
    return f


def _us(x: float) -> str:
    return f"{x * 1e6:.4g} µS"


@cli.command("calibrate")
@click.option("--board", "address", required=True, help="Board address, e.g. emu, serial:/dev/ttyUSB0.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for calibration.json, calibration.h5 and the plots.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random choice.")
@click.option("--sample", type=click.IntRange(min=1), default=None,
              help="Devices per sampled stage (default: read noise 1024, pulse response 1024, write noise 2048, "
                   "drift 2048).")
@click.option("--snr1-multiple", "--k", "snr1_multiple", default=1.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="ΔGth as a multiple of the SNR=1 change (--k: the former name).")
@click.option("--drift-delay", type=click.FloatRange(min=0), default=None,
              help="Write-to-use delay (s) whose drift spread is added to the noise in quadrature.")
@click.option("--drift-duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Last drift read after programming, seconds of board clock (default 1e4; real time on a "
                   "board without a virtual clock).")
@click.option("--resume", is_flag=True, help="Continue the calibration already in --out (same board, same options).")
@_profile_options
@click.option("--no-plots", is_flag=True, help="Do not write PNG plots.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the report's headline figures as JSON.")
@click.pass_context
def calibrate_cmd(ctx: click.Context, address: str, out_dir: Path, seed: int, sample: int | None,
                  snr1_multiple: float, drift_delay: float | None, drift_duration: float | None, resume: bool,
                  set_amplitude, set_width, reset_amplitude, reset_width, no_plots: bool, no_progress: bool,
                  as_json: bool) -> None:
    """Calibrate a board: read noise, stuck map, pulse response, write noise -> ΔGth, drift, spreads."""
    params = _calibration_params(seed=seed, sample=sample, snr1_multiple=snr1_multiple, drift_delay=drift_delay,
                                 drift_duration=drift_duration, no_plots=no_plots,
                                 profile_options=(set_amplitude, set_width, reset_amplitude, reset_width))
    report = _run_calibration(ctx, address, out_dir, params, resume=resume, progress=not no_progress)
    if as_json:
        click.echo(json.dumps(_headline(report, out_dir), indent=2))
    else:
        _print_summary(report, out_dir)


def _calibration_params(*, seed: int, sample: int | None, snr1_multiple: float, drift_delay: float | None,
                        drift_duration: float | None, no_plots: bool, profile_options: tuple):
    """The CalibrationParams of the options; a one-line error for values the model refuses."""
    from pydantic import ValidationError

    from calibration.run import CalibrationParams

    try:
        set_p, reset_p = _profiles(*profile_options)
        extra = {}
        if drift_duration is not None:
            extra["drift"] = CalibrationParams.model_fields["drift"].default.model_copy(
                update={"t_max_sec": drift_duration})
        return CalibrationParams(seed=seed, sample=sample, delta_g_th_snr1_multiple=snr1_multiple,
                                 drift_delay_sec=drift_delay, set_profile=set_p, reset_profile=reset_p,
                                 plots=not no_plots, **extra)
    except ValidationError as exc:
        fail(f"invalid option: {validation_summary(exc)}")
    except ValueError as exc:
        fail(f"invalid option: {exc}")


def _run_calibration(ctx: click.Context, address: str, out_dir: Path, params, *, resume: bool, progress: bool):
    """Calibrate; Ctrl-C (exit 130) and the errors a user can fix end with one line saying how to go on."""
    from calibration.run import H5_NAME, calibrate
    from calibration.storage import AlreadyMeasured, ResumeRefused
    from hil.interruptions import resume_command, sigint_guard

    kept = out_dir / H5_NAME
    try:
        with sigint_guard():
            with open_for(ctx, address) as board:
                return calibrate(board, out_dir, params, resume=resume, progress=progress)
    except KeyboardInterrupt:
        saved = f"the finished stages are kept in {kept}" if kept.exists() else "no stage had finished"
        click.echo(f"interrupted: {saved}; resume with: {resume_command(ctx)}", err=True)
        sys.exit(130)
    except AlreadyMeasured:
        fail(f"{kept} already holds measurements: continue that calibration with: {resume_command(ctx)} "
             "(or choose another --out)")
    except ResumeRefused as exc:
        fail(str(exc))
    except (BoardError, ValueError, OSError) as exc:
        message = f"cannot write {out_dir}: {exc}" if isinstance(exc, OSError) else str(exc)
        suffix = f"; the finished stages are kept in {kept}; resume with: {resume_command(ctx)}" if kept.exists() else ""
        fail(f"{message}{suffix}")


def _headline(report, out_dir: Path) -> dict:
    """The report's headline figures (``--json``)."""
    from calibration.run import JSON_NAME

    return {
        "calibration": str(out_dir / JSON_NAME),
        "delta_g_th_s": report.delta_g_th_s,
        "delta_g_th_pulses": report.delta_g_th_pulses,
        "write_noise_sigma_s": report.write_noise_sigma_s,
        "c2c_sigma_s": report.c2c_sigma_s,
        "pulse_step_mean_s": report.pulse_step_mean_s,
        "read_noise_rel": report.read_noise_rel,
        "drift_mu_s": report.drift.mu_s,
        "stuck_fraction": report.stuck_fraction,
        "d2d_cv": report.d2d_cv,
        "wall_s": report.run.get("wall_duration_sec"),
    }


def _print_summary(report, out_dir: Path) -> None:
    from calibration.run import JSON_NAME

    click.echo(f"calibration  {out_dir / JSON_NAME}")
    click.echo(f"ΔGth         {_us(report.delta_g_th_s)} ({report.delta_g_th_snr1_multiple:g} x the SNR=1 change), "
               f"{report.delta_g_th_pulses} pulses per quantum")
    click.echo(f"write noise  s = {_us(report.write_noise_sigma_s)} per event, "
               f"c2c = {_us(report.c2c_sigma_s)} per pulse at mid-window")
    click.echo(f"step         SET {_us(report.pulse_step_mean_s['set'])}, "
               f"RESET {_us(report.pulse_step_mean_s['reset'])} per pulse at mid-window")
    click.echo(f"window       {_us(report.window_s['g_min_s'])} .. {_us(report.window_s['g_max_s'])}")
    click.echo(f"read noise   {100 * report.read_noise_rel:.3g} %")
    click.echo(f"drift        mu = {_us(report.drift.mu_s)} per ln(1+t/{report.drift.t0_sec:g} s)")
    click.echo(f"stuck        {100 * report.stuck_fraction:.3g} % of devices; d2d step CV {report.d2d_cv:.3g}")
    click.echo(f"took         {report.run.get('wall_duration_sec', 0):.1f} s")


# ---- characterize ---------------------------------------------------------------------------
@cli.group("characterize")
def characterize_group() -> None:
    """Device-characterization routines (each writes DIR/NAME.h5 and DIR/NAME.png)."""


def _remember(ctx: click.Context, param: click.Parameter, value):
    ctx.meta[f"characterize.{param.name}"] = value


def _common(f):
    for opt in reversed([
        click.option("--board", "address", required=True, help="Board address."),
        click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path)),
        click.option("--overwrite", is_flag=True, expose_value=False, callback=_remember,
                     help="Replace this routine's files in --out if they exist."),
        click.option("--no-progress", is_flag=True, expose_value=False, callback=_remember, help="No progress bar."),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--region", default=None, metavar="ROW0,COL0,ROWS,COLS",
                     help="Rectangle of devices (default: see each routine)."),
    ]):
        f = opt(f)
    return _profile_options(f)


def _region(text: str | None):
    if text is None:
        return None
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4:
        fail(f"--region expects ROW0,COL0,ROWS,COLS (four integers), got {text!r}")
    if min(parts[:2]) < 0 or min(parts[2:]) < 1:
        fail(f"--region expects ROW0,COL0 >= 0 and ROWS,COLS >= 1, got {text!r}")
    return parts


def _run_char(ctx, name: str, address: str, out_dir: Path, params_fn, profiles, **kwargs) -> None:
    from pydantic import ValidationError

    from calibration import characterize as ch
    from calibration.run import _progress_bar

    stem = name.replace("-", "_")
    existing = [p for p in (out_dir / f"{stem}.h5", out_dir / f"{stem}.png") if p.exists()]
    if existing and not ctx.meta.get("characterize.overwrite"):
        fail(f"{existing[0]} exists: choose another --out, or pass --overwrite to replace it")
    try:
        set_p, reset_p = _profiles(*profiles)
    except ValidationError as exc:
        fail(f"invalid option: {validation_summary(exc)}")
    except ValueError as exc:
        fail(f"invalid option: {exc}")
    bar = None
    try:
        with open_for(ctx, address) as board:
            if set_p is not None or reset_p is not None:
                board.set_profiles(set_p or board.profiles[0], reset_p or board.profiles[1])
            try:
                params = params_fn(board)
            except ValidationError as exc:
                fail(f"invalid option: {validation_summary(exc)}")
            extra = {k: (v(board) if callable(v) else v) for k, v in kwargs.items()}
            tick, bar = _progress_bar(not ctx.meta.get("characterize.no_progress"), ch.progress_units(name, params),
                                      desc=name)
            measured = ch.run(name, board, params, out_dir, progress=tick, **extra)
    except KeyboardInterrupt:
        click.echo("interrupted: nothing of this routine was saved", err=True)
        sys.exit(130)
    except (BoardError, ValueError, OSError) as exc:
        fail(str(exc))
    finally:
        if bar is not None:
            bar.close()
    click.echo(f"{name}: {out_dir / (stem + '.h5')}, {out_dir / (stem + '.png')}")
    click.echo(measured.result.model_dump_json(indent=2))


@characterize_group.command("read-all")
@_common
@click.option("--reads", default=1, show_default=True, type=click.IntRange(min=1), help="Reads averaged.")
@click.pass_context
def read_all_cmd(ctx, address, out_dir, seed, region, set_amplitude, set_width, reset_amplitude, reset_width, reads):
    """Conductance map of the array (or --region)."""
    from calibration.characterize import ReadAllParams

    _run_char(ctx, "read-all", address, out_dir,
              lambda b: ReadAllParams(seed=seed, n_reads=reads, region=_region(region)),
              (set_amplitude, set_width, reset_amplitude, reset_width))


@characterize_group.command("pulse-response")
@_common
@click.option("--devices", default=256, show_default=True, type=click.IntRange(min=1),
              help="Random sample size when no --region is given.")
@click.option("--pulses-per-step", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--steps", default=48, show_default=True, type=click.IntRange(min=1))
@click.option("--cycles", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--reads", default=2, show_default=True, type=click.IntRange(min=1))
@click.pass_context
def pulse_response_cmd(ctx, address, out_dir, seed, region, set_amplitude, set_width, reset_amplitude, reset_width,
                       devices, pulses_per_step, steps, cycles, reads):
    """SET then RESET pulse trains across the window, read after every write event."""
    from calibration.characterize import CharPulseResponseParams

    _run_char(ctx, "pulse-response", address, out_dir,
              lambda b: CharPulseResponseParams(seed=seed, region=_region(region), n_devices=devices,
                                                pulses_per_step=pulses_per_step, steps=steps, cycles=cycles,
                                                n_reads=reads),
              (set_amplitude, set_width, reset_amplitude, reset_width))


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(p) for p in text.split(","))
    except ValueError:
        vals = ()
    if not vals:
        fail(f"{what} expects comma-separated numbers, got {text!r}")
    return vals


@characterize_group.command("retention")
@_common
@click.option("--devices", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--targets", default="10e-6,30e-6,50e-6,70e-6", show_default=True, help="Levels in siemens.")
@click.option("--tolerance", default=1.5e-6, show_default=True, type=float, help="Write-verify tolerance, siemens.")
@click.option("--duration", default=1e4, show_default=True, type=float, help="Last read, seconds of board clock.")
@click.option("--times", default=9, show_default=True, type=click.IntRange(min=2), help="Log-spaced reads.")
@click.option("--reads", default=4, show_default=True, type=click.IntRange(min=1))
@click.pass_context
def retention_cmd(ctx, address, out_dir, seed, region, set_amplitude, set_width, reset_amplitude, reset_width,
                  devices, targets, tolerance, duration, times, reads):
    """Write-verify levels and follow them on the board clock."""
    from calibration.characterize import RetentionParams

    _run_char(ctx, "retention", address, out_dir,
              lambda b: RetentionParams(seed=seed, region=_region(region), n_devices=devices,
                                        targets_s=_floats(targets, "--targets"), tolerance_s=tolerance,
                                        t_max_sec=duration, n_times=times, n_reads=reads),
              (set_amplitude, set_width, reset_amplitude, reset_width))


@characterize_group.command("endurance")
@_common
@click.option("--devices", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--cycles", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--pulses", default=128, show_default=True, type=click.IntRange(min=1),
              help="Pulses of each polarity per cycle.")
@click.option("--checkpoints", default=20, show_default=True, type=click.IntRange(min=2))
@click.pass_context
def endurance_cmd(ctx, address, out_dir, seed, region, set_amplitude, set_width, reset_amplitude, reset_width,
                  devices, cycles, pulses, checkpoints):
    """Full SET/RESET cycling; the high/low states read at log-spaced cycles."""
    from calibration.characterize import EnduranceParams

    _run_char(ctx, "endurance", address, out_dir,
              lambda b: EnduranceParams(seed=seed, region=_region(region), n_devices=devices, cycles=cycles,
                                        pulses_per_cycle=pulses, checkpoints=checkpoints),
              (set_amplitude, set_width, reset_amplitude, reset_width))


@characterize_group.command("program")
@_common
@click.option("--targets", "targets_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Target map (siemens): .npy, or .csv/.txt of rows x cols.")
@click.option("--pattern", type=click.Choice(["uniform", "checkerboard", "gradient", "random"]), default=None,
              help="Generated target map instead of --targets.")
@click.option("--low", default=10e-6, show_default=True, type=float, help="Pattern low level, siemens.")
@click.option("--high", default=60e-6, show_default=True, type=float, help="Pattern high level, siemens.")
@click.option("--tolerance", default=1.0e-6, show_default=True, type=float, help="Write-verify tolerance, siemens.")
@click.option("--max-iter", default=40, show_default=True, type=click.IntRange(1, 1000))
@click.pass_context
def program_cmd(ctx, address, out_dir, seed, region, set_amplitude, set_width, reset_amplitude, reset_width,
                targets_file, pattern, low, high, tolerance, max_iter):
    """Write-verify a target conductance map (--targets FILE or --pattern)."""
    from calibration.characterize import ProgramParams, target_pattern

    if (targets_file is None) == (pattern is None):
        fail("give exactly one of --targets FILE or --pattern")
    reg = _region(region)

    def targets(board):
        shape = (reg[2], reg[3]) if reg else (board.info.rows, board.info.cols)
        if pattern is not None:
            return target_pattern(pattern, shape, low, high)
        try:
            if targets_file.suffix == ".npy":
                data = np.load(targets_file)
            else:
                data = np.loadtxt(targets_file, delimiter=None if targets_file.suffix == ".txt" else ",")
        except (OSError, ValueError) as exc:
            fail(f"cannot read the target map {targets_file}: {exc}")
        return np.atleast_2d(np.asarray(data, dtype=float))

    _run_char(ctx, "program", address, out_dir,
              lambda b: ProgramParams(seed=seed, region=reg, tolerance_s=tolerance, max_iter=max_iter),
              (set_amplitude, set_width, reset_amplitude, reset_width), targets_s=targets)




@characterize_group.command("iv-sweep")
@_common
@click.option("--devices", default=8, show_default=True, type=click.IntRange(min=1),
              help="Random sample size when no --region is given.")
@click.option("--v-max", default=1.5, show_default=True, type=float, help="Top of the SET branch (V).")
@click.option("--v-min", default=-1.8, show_default=True, type=float, help="Bottom of the RESET branch (V).")
@click.option("--step", "step_v", default=0.05, show_default=True, type=float, help="Voltage step (V).")
@click.option("--dwell", "dwell_sec", default=1e-3, show_default=True, type=float, help="Time per step (s).")
@click.option("--compliance", default=100e-6, show_default=True, type=float, help="Current compliance (A).")
@click.option("--cycles", default=1, show_default=True, type=click.IntRange(min=1))
@click.pass_context
def iv_sweep_cmd(ctx, address, out_dir, seed, region, set_amplitude, set_width, reset_amplitude, reset_width,
                 devices, v_max, v_min, step_v, dwell_sec, compliance, cycles):
    """Bipolar DC I-V sweeps under current compliance."""
    from calibration.characterize import IvSweepParams

    _run_char(ctx, "iv-sweep", address, out_dir,
              lambda b: IvSweepParams(seed=seed, region=_region(region), n_devices=devices, v_set_max_v=v_max,
                                      v_reset_min_v=v_min, step_v=step_v, dwell_sec=dwell_sec,
                                      compliance_a=compliance, cycles=cycles),
              (set_amplitude, set_width, reset_amplitude, reset_width))


@characterize_group.command("forming")
@_common
@click.option("--v-start", default=2.0, show_default=True, type=float)
@click.option("--v-stop", default=3.4, show_default=True, type=float)
@click.option("--v-step", default=0.1, show_default=True, type=float)
@click.option("--width", default=1e-6, show_default=True, type=float, help="Forming pulse width (s).")
@click.option("--compliance", default=100e-6, show_default=True, type=float, help="Current compliance (A).")
@click.pass_context
def forming_cmd(ctx, address, out_dir, seed, region, set_amplitude, set_width, reset_amplitude, reset_width,
                v_start, v_stop, v_step, width, compliance):
    """Incremental forming pulses until each device conducts."""
    from calibration.characterize import FormingParams

    _run_char(ctx, "forming", address, out_dir,
              lambda b: FormingParams(seed=seed, region=_region(region), v_start_v=v_start, v_stop_v=v_stop,
                                      v_step_v=v_step, width_sec=width, compliance_a=compliance),
              (set_amplitude, set_width, reset_amplitude, reset_width))
