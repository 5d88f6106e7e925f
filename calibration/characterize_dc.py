"""Characterization with DC sources under current compliance: I-V sweeps and forming.

Part of :mod:`calibration.characterize` (which runs and saves them, ``hil characterize
iv-sweep`` / ``forming``): each routine checks every voltage, width and compliance
against the board's effective limits before its first operation.
"""

from __future__ import annotations

import numpy as np
from pydantic import AliasChoices, BaseModel, Field, model_validator

from calibration.common import (
    Measured,
    ProcedureParams,
    Progress,
    Raw,
    Rect,
    SampleInfo,
    region_or_sample,
    split_flat,
)
from drivers.board import Board
from drivers.errors import BoardError, LimitViolation
from drivers.limits import (
    check_compliance,
    check_duration,
    check_form_voltage,
    check_sweep_voltages,
    exceeds,
)


# ---- I-V sweep -------------------------------------------------------------------------------
class IvSweepParams(ProcedureParams):
    n_devices: int = Field(8, ge=1, description="random sample size when no region is given")
    region: Rect | None = None
    v_set_max_v: float = Field(1.5, gt=0, description="top of the positive (SET) branch")
    v_reset_min_v: float = Field(-1.8, lt=0, description="bottom of the negative (RESET) branch")
    step_v: float = Field(0.05, gt=0, description="voltage step of the staircase")
    dwell_sec: float = Field(1e-3, gt=0, description="time per voltage step",
                             validation_alias=AliasChoices("dwell_sec", "step_s"))  # step_s: files before the I-V rename
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
    check_duration(params.dwell_sec, lim, "sweep step duration (--dwell)")
    board.check_dc_duration(params.dwell_sec, "sweep step (--dwell)")
    check_compliance(params.compliance_a, lim)


def iv_sweep(board: Board, params: IvSweepParams = IvSweepParams(), progress: Progress = None) -> Measured:
    """Bipolar DC staircase 0 -> V_set,max -> V_reset,min -> 0 on each device under compliance.

    Switching voltages are read off the curves: SET where the current first reaches
    half the compliance on the rising branch, RESET where the negative-branch current
    falls below a quarter of its peak magnitude.
    """
    preflight_iv_sweep(board, params)
    flat = region_or_sample(board, params.region, params.n_devices, params.seed, "iv-sweep")
    rows, cols = split_flat(board, flat)
    volts = _staircase(params)
    curves = []
    for c in range(params.cycles):
        curves.append(board.iv_sweep(rows, cols, volts, params.dwell_sec, params.compliance_a))
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
    width_sec: float = Field(1e-6, gt=0)
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
    check_duration(params.width_sec, lim, "forming pulse width (--width)")
    board.check_dc_duration(params.width_sec, "forming pulse (--width)")
    check_compliance(params.compliance_a, lim)


def forming(board: Board, params: FormingParams = FormingParams(), progress: Progress = None) -> Measured:
    """Incremental forming: pulses of rising amplitude, each only on devices not yet formed.

    A device counts as formed once a read shows it above ``formed_above_s``; devices
    that already read above it before the first pulse are left alone.
    """
    preflight_forming(board, params)
    flat = region_or_sample(board, params.region, None, params.seed, "forming")
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
        board.form(rows[todo], cols[todo], float(v), params.width_sec, params.compliance_a)
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
