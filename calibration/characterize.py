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
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, model_validator

from calibration.common import (
    Measured,
    ProcedureParams,
    Progress,
    Raw,
    SampleInfo,
    Stopwatch,
    check_board_profiles,
    choose_devices,
    pulse_devices,
    quantisation_var,
    read_mean,
    split_flat,
    stage_rng,
)
from calibration.drift import DriftParams, analyse_drift, read_at_log_times
from drivers.board import Board, Region
from drivers.errors import BoardError, LimitViolation
from drivers.limits import (
    check_compliance,
    check_duration,
    check_event_pulses,
    check_form_voltage,
    check_sweep_voltages,
    exceeds,
)

Rect = tuple[int, int, int, int]


def _region_flat(board: Board, region: Rect | None) -> np.ndarray:
    info = board.info
    r = Region(*region) if region is not None else Region(0, 0, info.rows, info.cols)
    r.check_within(info.rows, info.cols)
    rr, cc = np.meshgrid(np.arange(r.row0, r.row0 + r.rows), np.arange(r.col0, r.col0 + r.cols), indexing="ij")
    return (rr * info.cols + cc).ravel()


def _devices(board: Board, region: Rect | None, n_devices: int | None, seed: int, name: str) -> np.ndarray:
    if region is not None:
        return _region_flat(board, region)
    if n_devices is None:
        return _region_flat(board, None)
    return choose_devices(board, n_devices, stage_rng(seed, name), what=f"the {name} sample")


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
    flat = _devices(board, params.region, params.n_devices, params.seed, "pulse_response")
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
    t_max_s: float = Field(1e4, gt=0, description="last read after programming (board clock)")
    n_times: int = Field(9, ge=2)
    n_reads: int = Field(4, ge=1)
    t0_s: float = Field(1.0, gt=0)


def retention(board: Board, params: RetentionParams | None = None, progress: Progress = None) -> Measured:
    """Write-verify levels, then read them at log-spaced times (the verified state itself, no release)."""
    params = params or RetentionParams()
    check_board_profiles(board)
    flat = _devices(board, params.region, params.n_devices, params.seed, "retention")
    rng = stage_rng(params.seed, "retention-levels")
    n_lv = len(params.targets_s)
    level_idx = rng.permutation(np.arange(flat.size) % n_lv)
    targets = np.asarray(params.targets_s)[level_idx]
    rows, cols = split_flat(board, flat)
    prog = board.program(rows, cols, targets, params.tolerance_s, params.max_iter)
    actual, reads, _ = read_at_log_times(board, flat, params.t_max_s, params.n_times, params.n_reads, progress)
    dp = DriftParams(n_devices=max(8, flat.size), levels=tuple(float(x) for x in params.targets_s),
                     n_reads=params.n_reads, t0_s=params.t0_s, t_max_s=params.t_max_s, n_times=params.n_times)
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
    flat = _devices(board, params.region, params.n_devices, params.seed, "endurance")
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
    flat = _region_flat(board, params.region)
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


# ---- I-V sweep -------------------------------------------------------------------------------
class IvSweepParams(ProcedureParams):
    n_devices: int = Field(8, ge=1, description="random sample size when no region is given")
    region: Rect | None = None
    v_set_max_v: float = Field(1.5, gt=0, description="top of the positive (SET) branch")
    v_reset_min_v: float = Field(-1.8, lt=0, description="bottom of the negative (RESET) branch")
    step_v: float = Field(0.05, gt=0, description="voltage step of the staircase")
    step_s: float = Field(1e-3, gt=0, description="time per voltage step")
    compliance_a: float = Field(100e-6, gt=0, description="current compliance of the whole sweep")
    cycles: int = Field(1, ge=1, description="full sweeps per device")


class IvSweepResult(BaseModel):
    sample: SampleInfo
    v_set_median_v: float | None = Field(description="median voltage where |I| first reaches half the compliance")
    v_reset_median_v: float | None = Field(description="median voltage where the RESET branch drops below a "
                                                       "quarter of its peak")
    on_off_ratio_median: float | None = Field(description="|I| at +0.2 V after the SET over the same before it")
    compliance_a: float


def _staircase(p: IvSweepParams) -> np.ndarray:
    up = np.arange(0.0, p.v_set_max_v + p.step_v / 2, p.step_v)
    down = np.arange(p.v_set_max_v, p.v_reset_min_v - p.step_v / 2, -p.step_v)
    back = np.arange(p.v_reset_min_v, p.step_v / 2, p.step_v)
    # the half-step margins of arange must not carry a point past the range asked for
    return np.clip(np.concatenate([up, down, back]), p.v_reset_min_v, p.v_set_max_v)


def preflight_iv_sweep(board: Board, params: IvSweepParams) -> None:
    """The whole staircase, its step time and the compliance against the effective limits."""
    if not board.info.capabilities.iv_sweep:
        raise BoardError(f"this board ({board.info.kind}) cannot run I-V sweeps")
    lim = board.limits
    check_sweep_voltages(_staircase(params), lim)
    check_duration(params.step_s, lim, "sweep step duration (--step-s)")
    board.check_dc_duration(params.step_s, "sweep step (--step-s)")
    check_compliance(params.compliance_a, lim)


def iv_sweep(board: Board, params: IvSweepParams = IvSweepParams(), progress: Progress = None) -> Measured:
    """Bipolar DC staircase 0 -> V_set,max -> V_reset,min -> 0 on each device under compliance.

    Switching voltages are read off the curves: SET where the current first reaches
    half the compliance on the rising branch, RESET where the negative-branch current
    falls below a quarter of its peak magnitude.
    """
    preflight_iv_sweep(board, params)
    flat = _devices(board, params.region, params.n_devices, params.seed, "iv-sweep")
    rows, cols = split_flat(board, flat)
    volts = _staircase(params)
    curves = []
    for c in range(params.cycles):
        curves.append(board.iv_sweep(rows, cols, volts, params.step_s, params.compliance_a))
        if progress:
            progress(1)
    i = np.stack(curves)  # (cycles, devices, steps)
    last = i[-1]
    n_up = int(np.searchsorted(volts[: np.argmax(volts) + 1], params.v_set_max_v - 1e-12)) + 1
    rising = np.abs(last[:, :n_up]) >= params.compliance_a / 2
    v_set = np.where(rising.any(axis=1), volts[np.argmax(rising, axis=1)], np.nan)
    neg = volts < 0
    v_reset = np.full(flat.size, np.nan)
    if neg.any():
        seg = np.abs(last[:, neg])
        peak = seg.max(axis=1, keepdims=True)
        below = (seg < peak / 4) & (np.arange(seg.shape[1]) > np.argmax(seg, axis=1)[:, None])
        v_reset = np.where(below.any(axis=1) & (peak[:, 0] > 0), volts[neg][np.argmax(below, axis=1)], np.nan)
    # on/off: |I| at +0.2 V on the falling branch (after SET) over the same on the rising one (before)
    k_before = int(np.argmin(np.abs(volts[:n_up] - 0.2)))
    k_after = n_up + int(np.argmin(np.abs(volts[n_up:] - 0.2)))
    before, after = np.abs(last[:, k_before]), np.abs(last[:, k_after])
    good = before > 0
    ratio = float(np.median(after[good] / before[good])) if good.any() else None

    def med(a):
        return None if np.all(np.isnan(a)) else float(np.nanmedian(a))

    result = IvSweepResult(sample=SampleInfo(n_devices=int(flat.size), selection="region" if params.region else "random"),
                           v_set_median_v=med(v_set), v_reset_median_v=med(v_reset), on_off_ratio_median=ratio,
                           compliance_a=params.compliance_a)
    raw = Raw()
    raw.add("voltages", volts, "V")
    raw.add("currents", i, "A")
    raw.add("devices", flat, "flat index")
    raw.add("v_set", v_set, "V")
    raw.add("v_reset", v_reset, "V")
    return Measured(result, raw)


# ---- forming ---------------------------------------------------------------------------------
class FormingParams(ProcedureParams):
    region: Rect | None = Field(None, description="devices to form; default the whole array")
    v_start_v: float = Field(2.0, gt=0)
    v_stop_v: float = Field(3.4, gt=0)
    v_step_v: float = Field(0.1, gt=0)
    width_s: float = Field(1e-6, gt=0)
    compliance_a: float = Field(100e-6, gt=0)
    formed_above_s: float = Field(5e-6, gt=0, description="a device reading above this conductance is formed")

    @model_validator(mode="after")
    def _rising(self) -> "FormingParams":
        if self.v_stop_v < self.v_start_v:
            raise ValueError(f"v_stop_v ({self.v_stop_v:g} V) is below v_start_v ({self.v_start_v:g} V)")
        return self

    def steps_v(self) -> np.ndarray:
        """v_start, v_start + step, ... up to v_stop (never beyond it; v_stop itself if on the grid)."""
        n = int(np.floor((self.v_stop_v - self.v_start_v) / self.v_step_v + 1e-9)) + 1
        return np.minimum(self.v_start_v + self.v_step_v * np.arange(n), self.v_stop_v)


class FormingResult(BaseModel):
    n_devices: int
    formed_fraction: float
    already_formed_fraction: float
    v_form_median_v: float | None
    g_after_median_s: float | None


def preflight_forming(board: Board, params: FormingParams) -> None:
    """Every forming voltage, the width and the compliance against the effective limits."""
    if not board.info.capabilities.forming:
        raise BoardError(f"this board ({board.info.kind}) cannot apply forming pulses")
    lim = board.limits
    top = float(params.steps_v().max())
    if exceeds(top, lim.max_form_v):
        raise LimitViolation(f"the forming staircase ends at {top:.3f} V, above the effective limit max_form_v = "
                             f"{lim.max_form_v:.3f} V; lower --v-stop to at most {lim.max_form_v:.3f} V")
    check_form_voltage(top, lim)
    check_duration(params.width_s, lim, "forming pulse width (--width)")
    board.check_dc_duration(params.width_s, "forming pulse (--width)")
    check_compliance(params.compliance_a, lim)


def forming(board: Board, params: FormingParams = FormingParams(), progress: Progress = None) -> Measured:
    """Incremental forming: pulses of rising amplitude, each only on devices not yet formed.

    A device counts as formed once a read shows it above ``formed_above_s``; devices
    that already read above it before the first pulse are left alone.
    """
    preflight_forming(board, params)
    flat = _devices(board, params.region, None, params.seed, "forming")
    rows, cols = split_flat(board, flat)
    g0 = board.read_cells(rows, cols)
    formed = g0 > params.formed_above_s
    already = formed.copy()
    v_form = np.full(flat.size, np.nan)
    steps = params.steps_v()
    for v in steps:
        todo = ~formed
        if not todo.any():
            break
        board.form(rows[todo], cols[todo], float(v), params.width_s, params.compliance_a)
        g = board.read_cells(rows[todo], cols[todo])
        now = g > params.formed_above_s
        idx = np.flatnonzero(todo)[now]
        formed[idx] = True
        v_form[idx] = v
        if progress:
            progress(1)
    g_after = board.read_cells(rows, cols)
    newly = formed & ~already
    result = FormingResult(n_devices=int(flat.size), formed_fraction=float(formed.mean()),
                           already_formed_fraction=float(already.mean()),
                           v_form_median_v=float(np.median(v_form[newly])) if newly.any() else None,
                           g_after_median_s=float(np.median(g_after[newly])) if newly.any() else None)
    raw = Raw()
    raw.add("devices", flat, "flat index")
    raw.add("g_before", g0, "S")
    raw.add("g_after", g_after, "S")
    raw.add("v_form", v_form, "V")
    raw.add("formed", formed, "bool")
    return Measured(result, raw)


# ---- plots and saving ----------------------------------------------------------------------
def plot(name: str, measured: Measured, path: Path) -> Path:
    from calibration import plots

    raw = measured.raw
    if name == "read-all":
        return plots.plot_conductance_map(raw["g"], path, title="read-all conductance map")
    if name == "program":
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
        targets, final = np.asarray(raw["targets"]), np.asarray(raw["final"])
        plots.conductance_image(fig, axes[0], targets, "target")
        plots.conductance_image(fig, axes[1], final, "final read")
        plots.difference_image(fig, axes[2], final - targets, "final - target", label="final - target (µS)")
        for ax in axes:
            ax.set(xlabel="column", ylabel="row")
        fig.suptitle(f"program: write-verify of {targets.size} devices")
        return plots._save(fig, path)
    if name == "pulse-response":
        g = np.asarray(raw["g"])
        return plots.plot_xy(np.asarray(raw["pulses"]), {"mean": g.mean(axis=1) * 1e6, "device 0": g[:, 0] * 1e6},
                             path, "pulses", "G (µS)", "pulse response")
    if name == "retention":
        t = np.maximum(np.asarray(raw["times"]), 1e-3)
        g, lv = np.asarray(raw["g"]), np.asarray(raw["level_index"])
        targets = np.asarray(raw["targets"])
        ys = {f"target {targets[lv == k][0] * 1e6:.3g} µS": g[:, lv == k].mean(axis=1) * 1e6
              for k in np.unique(lv)}
        return plots.plot_xy(t, ys, path, "time after programming (s)", "mean G (µS)", "retention", logx=True)
    if name == "endurance":
        cyc = np.asarray(raw["cycles"])
        return plots.plot_xy(cyc, {"G high": np.asarray(raw["g_high"]).mean(axis=1) * 1e6,
                                   "G low": np.asarray(raw["g_low"]).mean(axis=1) * 1e6},
                             path, "cycles", "mean G (µS)", "endurance", logx=True)
    if name == "iv-sweep":
        import matplotlib.pyplot as plt

        volts, cur = np.asarray(raw["voltages"]), np.asarray(raw["currents"])
        shown = min(cur.shape[1], 8)
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for d in range(shown):
            i_ua = np.abs(cur[-1, d]) * 1e6
            # at 0 V (start and end of the staircase) or with no current: a gap, not a spike down the log axis
            ax.semilogy(volts, np.where((i_ua > 0) & (np.abs(volts) > 1e-6), i_ua, np.nan), lw=0.8)
        ax.set(xlabel="voltage (V)", ylabel="|current| (µA)",
               title=f"I-V sweeps under compliance ({shown} of {cur.shape[1]} devices, last cycle)")
        return plots._save(fig, path)
    if name == "forming":
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        v = np.asarray(raw["v_form"])
        if np.isfinite(v).any():
            ax[0].hist(v[np.isfinite(v)], bins=20)
        else:
            ax[0].text(0.5, 0.5, "no device formed in this sweep", ha="center", va="center", transform=ax[0].transAxes)
        ax[0].set(xlabel="forming voltage (V)", ylabel="devices", title="forming voltage of the devices formed")
        ax[1].hist(np.asarray(raw["g_after"]) * 1e6, bins=40)
        ax[1].set(xlabel="G after forming (µS)", ylabel="devices", title="conductance after forming")
        return plots._save(fig, path)
    raise ValueError(f"no plot for {name!r}")


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
