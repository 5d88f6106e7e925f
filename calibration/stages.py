"""The calibration's stages as a registry: one frozen :class:`Stage` record per stage, in run order.

Everything that treats the stages one by one reads :data:`REGISTRY`:

* the runner (:func:`calibration.run.calibrate`) measures them in order, checks their
  single write events against the limits before anything is sent, and shrinks the
  samples of the stages drawn from responsive devices to what the stuck map found;
* :class:`calibration.run.CalibrationParams` has one field per stage
  (``Stage.params_field``, of type ``Stage.params_model``);
* resume reads a completed stage back from ``calibration.h5`` into ``Stage.result_model``;
* the HDF5 layout: a stage's arrays go to ``/stages/<name>/<dataset>`` and must be
  exactly ``Stage.datasets`` (checked as each stage ends);
* the report: ``Stage.report`` gives the fields (and their one-sigma uncertainties)
  that the stage's result alone fixes; the figures combining several stages (the step
  at mid-window, ΔGth, the drift model, the device-to-device spreads) are
  :mod:`calibration.report_builder`'s.  Every stage also gives its sample description,
  its pulses per device and its plot.

Adding a stage is one :class:`Stage` entry here (plus its module): the parameter
field, the run, resume, the file layout and the report's per-stage parts follow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from calibration.common import Measured, ProcedureParams, Progress, Raw
from calibration.drift import STAGE as DRIFT
from calibration.drift import DriftParams, DriftResult, measure_drift
from calibration.pulse_response import STAGE as PR
from calibration.pulse_response import (
    PulseResponseParams,
    PulseResponseResult,
    event_pulses,
    measure_pulse_response,
)
from calibration.read_noise import STAGE as RN
from calibration.read_noise import ReadNoiseParams, ReadNoiseResult, measure_read_noise
from calibration.stuck import STAGE as STUCK
from calibration.stuck import StuckParams, StuckResult, map_stuck
from calibration.write_noise import STAGE as WN
from calibration.write_noise import (
    WriteNoiseParams,
    WriteNoiseResult,
    measure_write_noise,
)
from drivers.board import Board


@dataclass(frozen=True)
class Earlier:
    """What the stages before this one produced: results and raw arrays by stage name."""

    results: Mapping[str, BaseModel]
    raws: Mapping[str, Raw]

    def responsive(self) -> np.ndarray | None:
        """Flat indices of the devices the stuck map found responsive (None before it ran)."""
        if STUCK not in self.raws:
            return None
        return np.flatnonzero(~np.asarray(self.raws[STUCK]["stuck"], bool).ravel())


@dataclass(frozen=True)
class ReportPart:
    """Report fields a stage's result fixes by itself, and their one-sigma uncertainties (by report field)."""

    fields: dict
    uncertainty: dict[str, float]


@dataclass(frozen=True)
class Stage:
    """One calibration stage (see the module docstring)."""

    name: str  # key of the results and HDF5 group ``/stages/<name>``
    params_field: str  # field of CalibrationParams holding its parameters
    params_model: type[ProcedureParams]
    result_model: type[BaseModel]
    measure: Callable[[Board, ProcedureParams, Earlier, Progress], Measured]
    datasets: tuple[str, ...]  # arrays under /stages/<name>/
    report: Callable[[BaseModel], ReportPart]
    pulses: Callable[[ProcedureParams, Raw, int], np.ndarray]  # pulses each device received, flat (n_all,)
    progress_units: Callable[[ProcedureParams], float]  # ~ its duration on the emulator (one unit ~ one batch)
    plot: Callable[[Path, BaseModel, Raw, object], Path] | None = None
    needs: tuple[str, ...] = ()  # earlier stages whose results it uses
    responsive_only: bool = False  # drawn from the devices the stuck map found responsive
    single_event: Callable[[ProcedureParams], tuple[str, int]] | None = None  # (what, pulses) of its largest event

    @property
    def sampled(self) -> bool:
        """Whether it measures a sample of ``n_devices`` devices (sized by ``CalibrationParams.sample``)."""
        return "n_devices" in self.params_model.model_fields

    def min_devices(self) -> int:
        """The smallest sample its parameter model accepts."""
        meta = self.params_model.model_fields["n_devices"].metadata
        return next((m.ge for m in meta if hasattr(m, "ge")), 1)


def _on(devices: np.ndarray | None, count: int | np.integer, n_all: int) -> np.ndarray:
    out = np.zeros(n_all, dtype=np.int64)
    if devices is None:
        out += int(count)
    else:
        out[np.asarray(devices)] += int(count)
    return out


# ---- read noise -----------------------------------------------------------------------
def _measure_read_noise(board: Board, p: ReadNoiseParams, earlier: Earlier, progress: Progress) -> Measured:
    return measure_read_noise(board, p, progress=progress)


def _plot_read_noise(out: Path, result: ReadNoiseResult, raw: Raw, report) -> Path:
    from calibration import plots

    return plots.plot_read_noise(result, raw, out / "read_noise.png")


READ_NOISE = Stage(
    name=RN, params_field="read_noise", params_model=ReadNoiseParams, result_model=ReadNoiseResult,
    measure=_measure_read_noise, datasets=("devices", "reads"),
    report=lambda r: ReportPart({"read_noise_rel": r.read_noise_rel}, {"read_noise_rel": r.read_noise_rel_sigma}),
    pulses=lambda p, raw, n_all: np.zeros(n_all, dtype=np.int64),
    progress_units=lambda p: 2, plot=_plot_read_noise,
)


# ---- stuck map ------------------------------------------------------------------------
def _measure_stuck(board: Board, p: StuckParams, earlier: Earlier, progress: Progress) -> Measured:
    return map_stuck(board, p, progress=progress)


def _report_stuck(st: StuckResult) -> ReportPart:
    counts = {"n_stuck": st.n_stuck, "n_stuck_high": st.n_stuck_high, "n_stuck_low": st.n_stuck_low,
              "n_devices": st.n_devices, "map": f"/stages/{STUCK}/stuck"}
    return ReportPart({"stuck_fraction": st.stuck_fraction, "stuck": counts},
                      {"stuck_fraction": st.stuck_fraction_sigma})


def _plot_stuck(out: Path, result: StuckResult, raw: Raw, report) -> Path:
    from calibration import plots

    return plots.plot_conductance_map(np.asarray(raw["g_before"]), out / "conductance_map.png",
                                      stuck=np.asarray(raw["stuck"]), title="conductance before calibration")


STUCK_MAP = Stage(
    name=STUCK, params_field="stuck", params_model=StuckParams, result_model=StuckResult,
    measure=_measure_stuck,
    datasets=("g_before", "g_after_set", "g_after_reset", "z_up", "z_down", "stuck", "stuck_high"),
    report=_report_stuck, pulses=lambda p, raw, n_all: _on(None, 2 * p.n_pulses, n_all),
    progress_units=lambda p: 10, plot=_plot_stuck,
)


# ---- pulse response -------------------------------------------------------------------
def _measure_pulse_response(board: Board, p: PulseResponseParams, earlier: Earlier, progress: Progress) -> Measured:
    return measure_pulse_response(board, p, pool=earlier.responsive(), progress=progress)


def _report_pulse_response(pr: PulseResponseResult) -> ReportPart:
    return ReportPart({"window_s": dict(pr.window_s)},
                      {"window_s.g_min_s": pr.window_sigma_s["g_min_s"],
                       "window_s.g_max_s": pr.window_sigma_s["g_max_s"]})


def _plot_pulse_response(out: Path, result: PulseResponseResult, raw: Raw, report) -> Path:
    from calibration import plots

    return plots.plot_pulse_response(result, raw, out / "pulse_response.png",
                                     fits=report.pulse_response if report else None)


PULSE_RESPONSE = Stage(
    name=PR, params_field="pulse_response", params_model=PulseResponseParams, result_model=PulseResponseResult,
    measure=_measure_pulse_response,
    datasets=("devices", "pulses", "g_set", "g_reset", "alpha_set_s", "alpha_reset_s", "g_hi_s", "g_lo_s", "fit_ok",
              "g_set_end_fit_s", "sse_set", "sse_reset"),
    report=_report_pulse_response,
    pulses=lambda p, raw, n_all: _on(raw["devices"], p.precondition_pulses + 2 * int(event_pulses(p).sum()), n_all),
    progress_units=lambda p: 3 * p.steps, plot=_plot_pulse_response, needs=(STUCK,), responsive_only=True,
    single_event=lambda p: (f"the {PR} stage's pulses_per_step", p.pulses_per_step),
)


# ---- write noise ----------------------------------------------------------------------
def _measure_write_noise(board: Board, p: WriteNoiseParams, earlier: Earlier, progress: Progress) -> Measured:
    rn: ReadNoiseResult = earlier.results[RN]
    pr: PulseResponseResult = earlier.results[PR]
    pr_raw = earlier.raws[PR]
    g_min, g_max = pr.window_s["g_min_s"], pr.window_s["g_max_s"]
    pool = earlier.responsive()
    ok = np.asarray(pr_raw["fit_ok"], bool)
    fitted = np.asarray(pr_raw["devices"])[ok]
    # prefer devices whose pulse-response curves fitted well (their windows are known); topped up from the pool
    bounds = (fitted, np.asarray(pr_raw["g_lo_s"])[ok], np.asarray(pr_raw["g_hi_s"])[ok])
    return measure_write_noise(board, p, target_s=g_min + pr.x_equilibrium * (g_max - g_min),
                               window_s=g_max - g_min, pool=fitted if fitted.size else pool, extra_pool=pool,
                               read_noise_rel=rn.read_noise_rel, step_mid_s=pr.step_mid_s["set"], model=pr.fits,
                               device_bounds_s=bounds, progress=progress)


def _report_write_noise(wn: WriteNoiseResult) -> ReportPart:
    return ReportPart({"write_noise_sigma_s": wn.write_noise_sigma_s, "c2c_sigma_rel": wn.c2c_sigma_rel},
                      {"write_noise_sigma_s": wn.write_noise_sigma_sigma_s, "c2c_sigma_rel": wn.c2c_sigma_rel_sigma,
                       "drift.sigma0_s": wn.relax_sigma0_sigma_s})


def _plot_write_noise(out: Path, result: WriteNoiseResult, raw: Raw, report) -> Path:
    from calibration import plots

    return plots.plot_write_noise(result, raw, out / "write_noise.png")


def _walk_pulses(p: WriteNoiseParams, raw: Raw, n_all: int) -> np.ndarray:
    """The random walk's partial pulses (one per event, the discarded one included) on its devices."""
    if "walk_g" not in raw or np.asarray(raw["walk_g"]).size == 0:
        return np.zeros(n_all, dtype=np.int64)
    return _on(raw["walk_devices"], 1 + (np.asarray(raw["walk_g"]).shape[0] - 1) * p.walk_checkpoint_events, n_all)


WRITE_NOISE = Stage(
    name=WN, params_field="write_noise", params_model=WriteNoiseParams, result_model=WriteNoiseResult,
    measure=_measure_write_noise,
    datasets=("devices", "g", "read_spread", "event_pulses", "event_polarity", "program_achieved",
              "program_converged", "program_pulses_total", "step_scale_set", "step_scale_set_var",
              "step_scale_reset", "step_scale_reset_var", "step_scale_set_pop", "step_scale_reset_pop", "used",
              "own_window", "cell_pulses", "cell_polarity",
              "cell_mean_change", "cell_mean_pre_g", "boot_sigma_w_s", "boot_relax_sigma0_s", "boot_c2c_rel",
              "walk_devices", "walk_g", "walk_width_sec", "boot_sigma_w_moment_s", "boot_sigma_w_walk_s"),
    report=_report_write_noise,
    pulses=lambda p, raw, n_all: _on(raw["devices"], np.abs(np.asarray(raw["event_pulses"])).sum(), n_all)
    + _walk_pulses(p, raw, n_all),
    progress_units=lambda p: 1 + len(p.pulse_counts) * p.cycles + 20 + (p.walk_max_events // 16 if p.walk else 0),
    plot=_plot_write_noise,
    needs=(RN, STUCK, PR), responsive_only=True,
    single_event=lambda p: (f"the {WN} stage's pulse_counts", max(p.pulse_counts)),
)


# ---- drift ----------------------------------------------------------------------------
def _measure_drift(board: Board, p: DriftParams, earlier: Earlier, progress: Progress) -> Measured:
    rn: ReadNoiseResult = earlier.results[RN]
    pr: PulseResponseResult = earlier.results[PR]
    return measure_drift(board, p, g_min_s=pr.window_s["g_min_s"], g_max_s=pr.window_s["g_max_s"],
                         pool=earlier.responsive(), read_noise_rel=rn.read_noise_rel, progress=progress)


def _plot_drift(out: Path, result: DriftResult, raw: Raw, report) -> Path:
    from calibration import plots

    return plots.plot_drift(result, raw, out / "drift.png")


DRIFT_STAGE = Stage(
    name=DRIFT, params_field="drift", params_model=DriftParams, result_model=DriftResult,
    measure=_measure_drift,
    datasets=("devices", "level_index", "targets", "converged", "program_iterations", "times", "g"),
    report=lambda dr: ReportPart({}, {"drift.mu_s": dr.mu_sigma_s, "drift.sigma1_s": dr.sigma1_sigma_s}),
    pulses=lambda p, raw, n_all: _on(raw["devices"], p.release_pulses, n_all),
    progress_units=lambda p: p.n_times + 11, plot=_plot_drift, needs=(RN, STUCK, PR), responsive_only=True,
    single_event=lambda p: (f"the {DRIFT} stage's release_pulses", p.release_pulses),
)


REGISTRY: tuple[Stage, ...] = (READ_NOISE, STUCK_MAP, PULSE_RESPONSE, WRITE_NOISE, DRIFT_STAGE)
"""The stages, in the order they run (each one's ``needs`` come before it)."""

STAGES: tuple[str, ...] = tuple(s.name for s in REGISTRY)
BY_NAME: dict[str, Stage] = {s.name: s for s in REGISTRY}


def _check_order() -> None:
    seen: set[str] = set()
    for s in REGISTRY:
        missing = set(s.needs) - seen
        if missing:
            raise RuntimeError(f"calibration stage {s.name} needs {sorted(missing)}, which run after it")
        seen.add(s.name)


_check_order()
