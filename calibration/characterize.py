"""Device-characterization routines: read-all map, pulse response, retention, endurance, programming,
I-V sweeps under compliance and forming.

Each routine takes a Board and a parameter model and returns
:class:`~calibration.common.Measured` (result + raw arrays); :func:`save` writes
``<out>/<name>.h5`` (raw arrays with units, parameters, board identity, board-clock
and wall time stamps) and ``<out>/<name>.png``.  :data:`PROCEDURES` maps the names
used on the command line (``hil characterize NAME``) to (function, params class).

Devices are a rectangular ``region`` (row0, col0, rows, cols) or, where a routine
samples, ``n_devices`` drawn at random from the whole array (seeded).

Every routine checks all its voltages, widths, compliances and pulse counts against
the board's effective limits before its first operation (:data:`PREFLIGHT`, run by
:func:`run` before anything is sent, and by each routine itself).

The routines with DC sources under compliance (I-V sweeps, forming) are in
:mod:`calibration.characterize_dc`, the plots in :mod:`calibration.characterize_plots`;
both are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from calibration.characterize_dc import (
    FormingParams,
    FormingResult,
    IvSweepParams,
    IvSweepResult,
    forming,
    iv_sweep,
    preflight_forming,
    preflight_iv_sweep,
)
from calibration.characterize_plots import plot
from calibration.common import (
    Measured,
    ProcedureParams,
    Progress,
    Raw,
    Rect,
    SampleInfo,
    Stopwatch,
    check_board_profiles,
    pulse_devices,
    quantisation_var,
    read_mean,
    region_flat,
    region_or_sample,
    split_flat,
    stage_rng,
)
from calibration.drift import DriftParams, analyse_drift, read_at_log_times
from drivers.board import Board, Region
from drivers.limits import check_event_pulses

__all__ = ["PREFLIGHT", "PROCEDURES", "CharPulseResponseParams", "EnduranceParams", "FormingParams", "FormingResult",
           "IvSweepParams", "IvSweepResult", "ProgramParams", "ReadAllParams", "RetentionParams", "endurance",
           "forming", "iv_sweep", "plot", "program_map", "progress_units", "pulse_response", "read_all", "retention",
           "run", "save", "target_pattern"]

# ---- read-all ------------------------------------------------------------------------------
class ReadAllParams(ProcedureParams):
    n_reads: int = Field(1, ge=1, description="reads of the array averaged")
    region: Rect | None = Field(None, description="(row0, col0, rows, cols); default the whole array")


class ReadAllResult(BaseModel):
    rows: int
    cols: int
    mean_s: float
    median_s: float
    min_s: float
    max_s: float
    p01_s: float
    p99_s: float
    read_noise_rel: float | None = Field(None, description="from the repeated reads (n_reads > 1)")


def read_all(board: Board, params: ReadAllParams | None = None, progress: Progress = None) -> Measured:
    """Conductance map of the array (or a region), averaged over ``n_reads`` reads."""
    params = params or ReadAllParams()
    info = board.info
    reg = Region(*params.region) if params.region else Region(0, 0, info.rows, info.cols)
    reads = np.stack([board.read(reg) for _ in range(params.n_reads)])
    g = reads.mean(axis=0)
    rel = None
    if params.n_reads > 1:
        from calibration.read_noise import FLOOR_LSB, estimate_read_noise

        rel = estimate_read_noise(reads.reshape(params.n_reads, -1), quantisation_var(board), FLOOR_LSB * info.g_lsb_s)
    if progress:
        progress(1.0)
    result = ReadAllResult(rows=reg.rows, cols=reg.cols, mean_s=float(g.mean()), median_s=float(np.median(g)),
                           min_s=float(g.min()), max_s=float(g.max()), p01_s=float(np.percentile(g, 1)),
                           p99_s=float(np.percentile(g, 99)), read_noise_rel=rel)
    raw = Raw()
    raw.add("g", g, "S")
    if params.n_reads > 1:
        raw.add("g_sd", reads.std(axis=0, ddof=1), "S")
    raw.attrs["region"] = [reg.row0, reg.col0, reg.rows, reg.cols]
    return Measured(result, raw)


# ---- pulse response ------------------------------------------------------------------------
class CharPulseResponseParams(ProcedureParams):
    region: Rect | None = None
    n_devices: int = Field(256, ge=1, description="random sample when no region is given")
    pulses_per_step: int = Field(8, ge=1)
    steps: int = Field(48, ge=1, description="write events per polarity and cycle")
    cycles: int = Field(1, ge=1, description="SET-then-RESET sweeps")
    n_reads: int = Field(2, ge=1)


class CharPulseResponseResult(BaseModel):
    n_devices: int
    cycles: int
    g_high_mean_s: list[float] = Field(description="mean G at the end of each SET sweep")
    g_low_mean_s: list[float] = Field(description="mean G at the end of each RESET sweep")
    first_step_mean_s: dict[str, float] = Field(description="mean |change| per pulse of the first event, by polarity")
    sample: SampleInfo


def preflight_pulse_response(board: Board, params: CharPulseResponseParams) -> None:
    check_board_profiles(board)
    check_event_pulses(params.pulses_per_step, board.limits, "pulses_per_step")


def pulse_response(board: Board, params: CharPulseResponseParams | None = None,
                   progress: Progress = None) -> Measured:
    """``cycles`` x (``steps`` SET events, ``steps`` RESET events), reads after each event."""
    params = params or CharPulseResponseParams()
    preflight_pulse_response(board, params)
    flat = region_or_sample(board, params.region, params.n_devices, params.seed, "pulse_response")
    m, k = params.pulses_per_step, params.steps
    n_events = 2 * k * params.cycles
    g = np.empty((n_events + 1, flat.size))
    polarity = np.empty(n_events, dtype=np.int64)
    g[0] = read_mean(board, flat, params.n_reads)
    e = 0
    for _ in range(params.cycles):
        for sign in (+1, -1):
            for _ in range(k):
                pulse_devices(board, flat, sign * m)
                polarity[e] = sign
                e += 1
                g[e] = read_mean(board, flat, params.n_reads)
                if progress:
                    progress(1.0)
    ends_set = np.arange(k, n_events + 1, 2 * k)
    ends_reset = np.arange(2 * k, n_events + 1, 2 * k)
    set_first = (g[1] - g[0]) / m
    reset_first = (g[k] - g[k + 1]) / m
    result = CharPulseResponseResult(
        n_devices=int(flat.size), cycles=params.cycles, g_high_mean_s=g[ends_set].mean(axis=1).tolist(),
        g_low_mean_s=g[ends_reset].mean(axis=1).tolist(),
        first_step_mean_s={"set": float(set_first.mean()), "reset": float(reset_first.mean())},
        sample=SampleInfo.from_counts(np.full(flat.size, n_events * m), "region" if params.region else "random",
                                      n_events))
    raw = Raw()
    raw.add("devices", flat, "flat index (row*cols+col)")
    raw.add("pulses", np.arange(n_events + 1) * m, "pulses")
    raw.add("polarity", polarity, "+1 SET / -1 RESET")
    raw.add("g", g, "S")
    return Measured(result, raw)


# ---- retention -----------------------------------------------------------------------------
class RetentionParams(ProcedureParams):
    region: Rect | None = None
    n_devices: int = Field(256, ge=1)
    targets_s: tuple[float, ...] = Field((10e-6, 30e-6, 50e-6, 70e-6), min_length=1,
                                         description="programmed levels (siemens)")
    tolerance_s: float = Field(1.5e-6, gt=0)
    max_iter: int = Field(40, ge=1, le=1000)
    t_max_sec: float = Field(1e4, gt=0, description="last read after programming (board clock)")
    n_times: int = Field(9, ge=2)
    n_reads: int = Field(4, ge=1)
    t0_sec: float = Field(1.0, gt=0)


def retention(board: Board, params: RetentionParams | None = None, progress: Progress = None) -> Measured:
    """Write-verify levels, then read them at log-spaced times (the verified state itself, no release)."""
    params = params or RetentionParams()
    check_board_profiles(board)
    flat = region_or_sample(board, params.region, params.n_devices, params.seed, "retention")
    rng = stage_rng(params.seed, "retention-levels")
    n_lv = len(params.targets_s)
    level_idx = rng.permutation(np.arange(flat.size) % n_lv)
    targets = np.asarray(params.targets_s)[level_idx]
    rows, cols = split_flat(board, flat)
    prog = board.program(rows, cols, targets, params.tolerance_s, params.max_iter)
    actual, reads, _ = read_at_log_times(board, flat, params.t_max_sec, params.n_times, params.n_reads, progress)
    dp = DriftParams(n_devices=max(8, flat.size), levels=tuple(float(x) for x in params.targets_s),
                     n_reads=params.n_reads, t0_sec=params.t0_sec, t_max_sec=params.t_max_sec, n_times=params.n_times)
    result = analyse_drift(actual, reads, level_idx, prog.converged, dp, 0.0, quantisation_var(board), targets)
    result.sample = SampleInfo.from_counts(np.zeros(flat.size, dtype=np.int64),
                                           f"write-verify used {prog.pulses} pulses in all")
    raw = Raw()
    raw.add("devices", flat, "flat index (row*cols+col)")
    raw.add("level_index", level_idx, "index into targets_s")
    raw.add("targets", targets, "S")
    raw.add("converged", prog.converged, "bool")
    raw.add("times", actual, "s")
    raw.add("g", reads, "S")
    return Measured(result, raw)


# ---- endurance -----------------------------------------------------------------------------
class EnduranceParams(ProcedureParams):
    region: Rect | None = None
    n_devices: int = Field(64, ge=1)
    cycles: int = Field(1000, ge=1, description="full SET/RESET cycles")
    pulses_per_cycle: int = Field(128, ge=1, description="pulses of each polarity per cycle")
    checkpoints: int = Field(20, ge=2, description="log-spaced cycles after which the high and low states are read")
    n_reads: int = Field(2, ge=1)
    fail_fraction: float = Field(0.5, gt=0, lt=1, description="a device has failed when its window falls "
                                                                "below this fraction of its first window")


class EnduranceResult(BaseModel):
    cycles: list[int]
    window_mean_s: list[float] = Field(description="mean of G_high - G_low at each checkpoint")
    switching_fraction: list[float] = Field(description="devices whose window is above fail_fraction of their first")
    failed_fraction: float
    pulses_per_device: int
    sample: SampleInfo


def endurance(board: Board, params: EnduranceParams | None = None, progress: Progress = None) -> Measured:
    """Cycle devices between the bounds; read the high and low states at log-spaced checkpoints."""
    params = params or EnduranceParams()
    check_board_profiles(board)
    flat = region_or_sample(board, params.region, params.n_devices, params.seed, "endurance")
    checks = np.unique(np.round(np.logspace(0, np.log10(params.cycles), params.checkpoints)).astype(int))
    hi = np.empty((checks.size, flat.size))
    lo = np.empty((checks.size, flat.size))
    done = 0
    for i, c in enumerate(checks):
        while done < c:
            pulse_devices(board, flat, +params.pulses_per_cycle, split=True)
            if done == c - 1:
                hi[i] = read_mean(board, flat, params.n_reads)
            pulse_devices(board, flat, -params.pulses_per_cycle, split=True)
            done += 1
        lo[i] = read_mean(board, flat, params.n_reads)
        if progress:
            progress(1.0)
    window = hi - lo
    first = np.maximum(window[0], 1e-30)
    switching = window > params.fail_fraction * first
    result = EnduranceResult(cycles=checks.tolist(), window_mean_s=window.mean(axis=1).tolist(),
                             switching_fraction=switching.mean(axis=1).tolist(),
                             failed_fraction=float(1 - switching[-1].mean()),
                             pulses_per_device=int(2 * params.pulses_per_cycle * params.cycles),
                             sample=SampleInfo.from_counts(np.full(flat.size, 2 * params.pulses_per_cycle
                                                                   * params.cycles),
                                                           "region" if params.region else "random"))
    raw = Raw()
    raw.add("devices", flat, "flat index (row*cols+col)")
    raw.add("cycles", checks, "cycles")
    raw.add("g_high", hi, "S")
    raw.add("g_low", lo, "S")
    return Measured(result, raw)


# ---- write-verify programming of a target map ---------------------------------------------------
class ProgramParams(ProcedureParams):
    region: Rect | None = Field(None, description="where the target map goes; default the whole array")
    tolerance_s: float = Field(1.0e-6, gt=0)
    max_iter: int = Field(40, ge=1, le=1000)
    n_reads: int = Field(4, ge=1, description="reads of the final check")


class ProgramResult(BaseModel):
    n_devices: int
    converged_fraction: float
    rms_error_s: float = Field(description="rms of (final read - target)")
    max_abs_error_s: float
    pulses: int
    energy_j: float
    mean_iterations: float


def program_map(board: Board, targets_s: np.ndarray, params: ProgramParams | None = None,
                progress: Progress = None) -> Measured:
    """Write-verify the target map ``targets_s`` (shape of the region) and read the result back."""
    params = params or ProgramParams()
    check_board_profiles(board)
    info = board.info
    reg = Region(*params.region) if params.region else Region(0, 0, info.rows, info.cols)
    reg.check_within(info.rows, info.cols)
    targets_s = np.asarray(targets_s, dtype=float)
    if targets_s.shape != (reg.rows, reg.cols):
        raise ValueError(f"the target map has shape {targets_s.shape}; the region is {reg.rows}x{reg.cols}")
    flat = region_flat(board, params.region)
    rows, cols = split_flat(board, flat)
    prog = board.program(rows, cols, targets_s.ravel(), params.tolerance_s, params.max_iter)
    if progress:
        progress(1.0)
    final = np.stack([board.read(reg) for _ in range(params.n_reads)]).mean(axis=0)
    err = final - targets_s
    result = ProgramResult(n_devices=int(flat.size), converged_fraction=prog.converged_fraction,
                           rms_error_s=float(np.sqrt(np.mean(err**2))), max_abs_error_s=float(np.abs(err).max()),
                           pulses=int(prog.pulses), energy_j=float(prog.energy_j),
                           mean_iterations=float(prog.iterations.mean()))
    raw = Raw()
    raw.add("targets", targets_s, "S")
    raw.add("achieved_verify", prog.achieved_s.reshape(reg.rows, reg.cols), "S")
    raw.add("final", final, "S")
    raw.add("converged", prog.converged.reshape(reg.rows, reg.cols), "bool")
    raw.add("iterations", prog.iterations.reshape(reg.rows, reg.cols), "write-verify rounds")
    raw.attrs["region"] = [reg.row0, reg.col0, reg.rows, reg.cols]
    return Measured(result, raw)


def target_pattern(kind: str, shape: tuple[int, int], low_s: float, high_s: float) -> np.ndarray:
    """Target maps for programming tests: 'uniform' (low), 'checkerboard', 'gradient', 'random' (seeded 0)."""
    r, c = shape
    if kind == "uniform":
        return np.full(shape, low_s)
    if kind == "checkerboard":
        return np.where((np.add.outer(np.arange(r), np.arange(c)) % 2) == 0, low_s, high_s)
    if kind == "gradient":
        return np.broadcast_to(np.linspace(low_s, high_s, c)[None, :], shape).copy()
    if kind == "random":
        return np.random.default_rng(0).uniform(low_s, high_s, size=shape)
    raise ValueError(f"unknown target pattern {kind!r}; use uniform, checkerboard, gradient or random")


# ---- preflight, progress, saving ----------------------------------------------------------
def _no_preflight(board: Board, params: BaseModel) -> None:
    """Reads only: the board checks the read voltage itself."""


#: What each routine checks before its first operation (run() calls it before anything is sent).
PREFLIGHT = {
    "read-all": _no_preflight,
    "pulse-response": preflight_pulse_response,
    "retention": lambda board, params: check_board_profiles(board),
    "endurance": lambda board, params: check_board_profiles(board),
    "program": lambda board, params: check_board_profiles(board),
    "iv-sweep": preflight_iv_sweep,
    "forming": preflight_forming,
}

PROCEDURES = {
    "read-all": (read_all, ReadAllParams),
    "pulse-response": (pulse_response, CharPulseResponseParams),
    "retention": (retention, RetentionParams),
    "endurance": (endurance, EnduranceParams),
    "program": (program_map, ProgramParams),
    "iv-sweep": (iv_sweep, IvSweepParams),
    "forming": (forming, FormingParams),
}


def progress_units(name: str, params: BaseModel) -> int:
    """How many progress ticks the routine ``name`` gives with ``params`` (the total of its progress bar)."""
    if name == "pulse-response":
        return 2 * params.steps * params.cycles
    if name == "retention":
        return params.n_times + 1  # the read right after programming, then n_times log-spaced
    if name == "endurance":
        return int(np.unique(np.round(np.logspace(0, np.log10(params.cycles), params.checkpoints))).size)
    if name == "iv-sweep":
        return params.cycles
    if name == "forming":
        return len(params.steps_v())
    return 1


def save(name: str, measured: Measured, board: Board, params: BaseModel | None, out_dir: str | Path,
         stamp=None, png: bool = True, settings: dict | None = None) -> dict[str, Path]:
    """Write ``<out_dir>/<name>.h5`` (+ ``.png``), with the board's settings snapshot (``settings``, or
    taken now); returns the paths."""
    from calibration.storage import board_identity, save_measurement

    out = Path(out_dir)
    stem = name.replace("-", "_")
    paths = {"h5": save_measurement(out / f"{stem}.h5", stem, measured.result, measured.raw, params, stamp,
                                    board.info.model_dump(mode="json"), board_identity(board),
                                    settings if settings is not None else board.settings_snapshot())}
    if png:
        paths["png"] = plot(name, measured, out / f"{stem}.png")
    return paths


def run(name: str, board: Board, params: BaseModel | None = None, out_dir: str | Path | None = None,
        progress: Progress = None, **kwargs) -> Measured:
    """Run the routine ``name`` (with ``kwargs`` for extra arguments such as ``targets_s``); save if ``out_dir``."""
    if name not in PROCEDURES:
        raise ValueError(f"unknown characterization {name!r}; choose from {', '.join(PROCEDURES)}")
    fn, cls = PROCEDURES[name]
    params = params or cls()
    PREFLIGHT[name](board, params)  # before the first request of any kind
    settings = board.settings_snapshot() if out_dir is not None else None  # as they were for the measurement
    watch = Stopwatch(board)
    measured = fn(board, *([kwargs.pop("targets_s")] if "targets_s" in kwargs else []), params, progress=progress)
    if out_dir is not None:
        save(name, measured, board, params, out_dir, watch.stamp(), settings=settings)
    return measured
