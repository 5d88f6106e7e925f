"""The whole calibration of a board: stages, raw data, report, plots, resume.

:func:`calibrate` is what ``hil calibrate`` and the training loop (``hil train``
without ``--calibration``) both call::

    report = calibrate(board, out_dir, CalibrationParams(seed=1), resume=False, progress=True)

Stages, in order (each one a module of this package):

==================  =====================================================================
``read_noise``      repeated reads of a random sample -> relative read noise
``stuck_map``       one SET and one RESET event for every device -> stuck map
``pulse_response``  SET/RESET curves of a sample of responsive devices -> soft-bounds fits
``write_noise``     events of n pulses near the SET/RESET balance -> s, sigma_rel, step scale
``drift``           programmed levels read on the board clock -> log drift fit
==================  =====================================================================

then the derived figures: the mean step at mid-window (pulse-response shape times
the write-noise stage's direct step scale, see below), ΔGth and its quantum
(:mod:`calibration.threshold`) and the device-to-device spreads
(:mod:`calibration.d2d`).

Files in ``out_dir``: ``calibration.json`` (the :class:`CalibrationReport`),
``calibration.h5`` (every stage's raw arrays with units, parameters, board-clock
and wall time stamps; saved atomically as each stage ends) and PNG plots.  With
``resume`` the completed stages are read back from ``calibration.h5`` and only the
rest is measured; the board identity (not its address) and the parameters must
match.  On a board that can snapshot its state (the emulator) the state saved with
the last completed stage is restored first, so a resumed calibration ends exactly
where an uninterrupted one does; a real board simply continues from where it is.

The step at mid-window.  Per-device nonlinear fits of noisy pulse-response curves
overestimate the step by a few percent (least-squares bias grows with the noise of
each curve).  The write-noise stage measures each device's mean change over many
events near mid-window, relative to the pulse-response model on the device's own
fitted window -- a linear, unbiased statistic -- so the model's scale ``alpha`` (and
the step at mid-window) is multiplied by the mean of those per-device factors; the
pulse response keeps giving the shape (``gamma``) and the window.  The step's
uncertainty adds the model's (gamma and the window moved by their standard errors)
to the spread of the factors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from calibration import d2d as d2d_mod
from calibration.common import Raw, Stopwatch, now_iso, stage_rng
from calibration.drift import STAGE as DRIFT
from calibration.drift import DriftParams, DriftResult, measure_drift
from calibration.pulse_response import STAGE as PR
from calibration.pulse_response import (
    PulseResponseParams,
    PulseResponseResult,
    event_pulses,
    measure_pulse_response,
    model_step,
)
from calibration.read_noise import STAGE as RN
from calibration.read_noise import ReadNoiseParams, ReadNoiseResult, measure_read_noise
from calibration.report import CalibrationReport, DriftModel, SoftBoundsFit
from calibration.atomic_files import atomic_write_bytes
from calibration.storage import RawStore, board_identity
from calibration.stuck import STAGE as STUCK
from calibration.stuck import StuckParams, StuckResult, map_stuck
from calibration.threshold import delta_g_threshold
from calibration.write_noise import STAGE as WN
from calibration.write_noise import WriteNoiseParams, WriteNoiseResult, measure_write_noise
from drivers.board import Board
from drivers.limits import PulseProfile, check_event_pulses, check_profile
from protocols.version import software_version

log = logging.getLogger(__name__)

STAGES = (RN, STUCK, PR, WN, DRIFT)
JSON_NAME = "calibration.json"
H5_NAME = "calibration.h5"


class CalibrationParams(BaseModel):
    """Everything a calibration run depends on (besides the board and its state)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, description="seed of every random choice (device samples, bootstraps)")
    sample: int | None = Field(None, ge=1, description="devices per sampled stage (read noise, pulse response, "
                                                       "write noise, drift); None: each stage's default")
    k: float = Field(1.0, gt=0, description="ΔGth = k x the SNR=1 change")
    drift_delay_s: float | None = Field(None, ge=0, description="write-to-use delay whose drift spread is added "
                                                               "to the noise in quadrature")
    set_profile: PulseProfile | None = Field(None, description="SET pulse to calibrate (default: the board's current)")
    reset_profile: PulseProfile | None = None
    read_noise: ReadNoiseParams = ReadNoiseParams()
    stuck: StuckParams = StuckParams()
    pulse_response: PulseResponseParams = PulseResponseParams()
    write_noise: WriteNoiseParams = WriteNoiseParams()
    drift: DriftParams = DriftParams()
    plots: bool = Field(True, description="write the PNG plots")

    def stage_params(self, n_array: int | None = None) -> dict[str, BaseModel]:
        """Per-stage parameters with the run's seed and sample size applied.

        Without an explicit ``sample`` each stage keeps its default size, but at most
        90 % of an ``n_array``-device array (room for stuck devices on small arrays).
        """
        out = {}
        for name, p in ((RN, self.read_noise), (STUCK, self.stuck), (PR, self.pulse_response),
                        (WN, self.write_noise), (DRIFT, self.drift)):
            upd = {"seed": self.seed}
            if "n_devices" in type(p).model_fields:
                if self.sample is not None:
                    upd["n_devices"] = self.sample
                elif n_array is not None:
                    floor = type(p).model_fields["n_devices"].metadata
                    lo = next((m.ge for m in floor if hasattr(m, "ge")), 1)
                    upd["n_devices"] = max(lo, min(p.n_devices, int(0.9 * n_array)))
            out[name] = p.model_copy(update=upd)
        return out

    def fingerprint(self) -> dict:
        """The parameters a resumed run must share with the original (plots do not matter)."""
        return self.model_dump(mode="json", exclude={"plots"})


def _units(params: dict[str, BaseModel]) -> dict[str, int]:
    """Progress units of each stage, roughly proportional to its duration on the emulator
    (one unit ~ one pulse batch with its reads; fits and plots counted too)."""
    pr = params[PR]
    wn = params[WN]
    return {RN: 2, STUCK: 10, PR: 3 * pr.steps, WN: 1 + len(wn.pulse_counts) * wn.cycles + 20,
            DRIFT: params[DRIFT].n_times + 11, "report": 40}


class _StageTicker:
    """Counts the units a stage reports, so that the rest of its share can be added when it ends."""

    def __init__(self, tick):
        self.tick, self.done = tick, 0.0

    def __call__(self, k: float) -> None:
        self.done += k
        self.tick(k)

    def finish(self, units: float) -> None:
        if units > self.done:
            self.tick(units - self.done)


def _progress_bar(enabled, total: float, desc: str = "calibrate"):
    """A tqdm bar with its time estimate (none when stderr is not a terminal) and the tick that advances it."""
    if callable(enabled):
        return enabled, None
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", desc=desc, dynamic_ncols=True, disable=None,
               bar_format="{l_bar}{bar}| {percentage:3.0f}% [{elapsed}<{remaining}]")
    return (lambda k: bar.update(k)), bar


def calibrate(board: Board, out_dir: str | Path, params: CalibrationParams | None = None, resume: bool = False,
              progress: bool | Callable[[float], None] = True) -> CalibrationReport:
    """Calibrate ``board``; writes ``out_dir``/calibration.json, calibration.h5 and plots.

    Raises ``ValueError`` for parameters the board cannot satisfy (e.g. a sample
    larger than the array), :class:`~calibration.storage.ResumeRefused` when resumed
    data do not match, and the board's own errors (:class:`drivers.errors.BoardError`).
    Stages finished before an error stay in ``calibration.h5``.
    """
    params = params or CalibrationParams()
    out = Path(out_dir)
    wall0, mono0 = time.time(), time.monotonic()
    info = board.info
    n_all = info.rows * info.cols
    if params.sample is not None and params.sample > n_all:
        raise ValueError(f"--sample {params.sample} is larger than the {info.rows}x{info.cols} array "
                         f"({n_all} devices)")
    sp = params.stage_params(n_all)
    for name, p in sp.items():
        n = getattr(p, "n_devices", None)
        if n is not None and n > n_all:
            raise ValueError(f"the {name} sample of {n} devices is larger than the {info.rows}x{info.cols} array "
                             f"({n_all} devices); pass a smaller sample")
    for what, n in ((f"the {PR} stage's pulses_per_step", sp[PR].pulses_per_step),
                    (f"the {WN} stage's pulse_counts", max(sp[WN].pulse_counts)),
                    (f"the {DRIFT} stage's release_pulses", sp[DRIFT].release_pulses)):
        check_event_pulses(n, board.limits, what)  # single write events; the other stages split theirs
    if params.set_profile is not None or params.reset_profile is not None:
        board.set_profiles(params.set_profile or board.profiles[0], params.reset_profile or board.profiles[1])
    set_p, reset_p = board.profiles
    check_profile(set_p, +1, board.limits)  # refuse before measuring anything, not at the first pulse
    check_profile(reset_p, -1, board.limits)
    identity = board_identity(board)
    settings = board.settings_snapshot()  # the instruments' settings the calibration ran with
    store = RawStore(out / H5_NAME)
    done = store.start(identity, info.model_dump(mode="json"), params.fingerprint(), resume,
                       extra={"address": getattr(board, "address", ""), "instrument_settings": settings})
    snapshots = info.capabilities.snapshot
    if done and snapshots:
        blob = store.board_snapshot()
        if blob is not None:
            board.restore(blob)  # the board sends our profiles again before its next pulse
    units = _units(sp)
    tick, bar = _progress_bar(progress, sum(units.values()))
    clock0 = board.clock()
    results: dict[str, BaseModel] = {}
    raws: dict[str, Raw] = {}
    stamps: dict[str, dict] = {}
    models = {RN: ReadNoiseResult, STUCK: StuckResult, PR: PulseResponseResult, WN: WriteNoiseResult,
              DRIFT: DriftResult}
    try:
        for name in STAGES:
            if name in done:
                res_json, raw, stamp = store.load_stage(name)
                results[name] = models[name].model_validate(res_json)
                raws[name] = raw
                stamps[name] = {"resumed": True, **(stamp or {})}
                if tick:
                    tick(units[name])
                continue
            if name != RN and STUCK in raws and params.sample is None:
                sp = _fit_samples_to_responsive(sp, raws[STUCK], n_all)
            watch = Stopwatch(board)
            ticker = _StageTicker(tick) if tick else None
            measured = _run_stage(name, board, sp[name], results, raws, ticker)
            if ticker:
                ticker.finish(units[name])
            stamp = watch.stamp()
            store.write_stage(name, measured.result, measured.raw, sp[name], stamp,
                              board_snapshot=board.snapshot() if snapshots else None)
            results[name], raws[name] = measured.result, measured.raw
            stamps[name] = stamp.model_dump()
            log.info("stage %s done in %.1f s", name, stamp.wall_duration_s)
        report = _report(board, params, identity, set_p, reset_p, results, raws)
        pulses = pulses_per_device(info.rows, info.cols, sp, results, raws)
        store.write_array("pulses_per_device", pulses, "pulses",
                          "pulses each device received from this calibration (write-verify pulses excluded)")
        report.sample["pulses_per_device_map"] = "/pulses_per_device"
        report.sample["pulses_per_device_max"] = int(pulses.max())
        report.sample["devices_pulsed"] = int(np.count_nonzero(pulses))
        files = {"report": JSON_NAME, "raw": H5_NAME}
        if params.plots:
            files["plots"] = [p.name for p in write_plots(out, results, raws, report)]
        if tick:
            tick(units["report"])
    finally:
        if bar is not None:
            bar.close()
    report.instrument_settings = settings
    report.run = {"address": getattr(board, "address", ""), "wall_start": time.strftime(
        "%Y-%m-%dT%H:%M:%S", time.localtime(wall0)), "wall_end": now_iso(),
        "wall_duration_s": time.monotonic() - mono0, "board_clock_start_s": clock0,
        "board_clock_end_s": board.clock(), "resumed_stages": [s for s in STAGES if s in done],
        "stages": stamps, "files": files}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / JSON_NAME, report.model_dump_json(indent=2).encode())
    return report


def _fit_samples_to_responsive(sp: dict[str, BaseModel], stuck_raw: Raw, n_all: int) -> dict[str, BaseModel]:
    """Shrink the default samples of the later stages to the devices that responded in the stuck map.

    Raises ``ValueError`` naming what the stuck map saw when too few devices respond to calibrate.
    """
    n_resp = int(np.count_nonzero(~np.asarray(stuck_raw["stuck"], bool)))
    out = dict(sp)
    for name in (PR, WN, DRIFT):
        p = sp[name]
        floor = next((m.ge for m in type(p).model_fields["n_devices"].metadata if hasattr(m, "ge")), 1)
        if n_resp < floor:
            raise ValueError(f"cannot calibrate: the stuck map found {n_all - n_resp} of {n_all} devices stuck "
                             f"({100 * (n_all - n_resp) / n_all:.1f} %); only {n_resp} respond to the pulses, and the "
                             f"{name} stage needs at least {floor}. Check the pulse profiles and the array")
        if p.n_devices > n_resp:
            log.warning("%s: sample reduced from %d to the %d responsive devices", name, p.n_devices, n_resp)
            out[name] = p.model_copy(update={"n_devices": n_resp})
    return out


def _run_stage(name: str, board: Board, p: BaseModel, results: dict, raws: dict, tick):
    pool = None
    if STUCK in raws:
        pool = np.flatnonzero(~np.asarray(raws[STUCK]["stuck"], bool).ravel())
    if name == RN:
        return measure_read_noise(board, p, progress=tick)
    if name == STUCK:
        return map_stuck(board, p, progress=tick)
    if name == PR:
        return measure_pulse_response(board, p, pool=pool, progress=tick)
    rn: ReadNoiseResult = results[RN]
    pr: PulseResponseResult = results[PR]
    g_min, g_max = pr.window_s["g_min_s"], pr.window_s["g_max_s"]
    if name == WN:
        # prefer devices whose pulse-response curves fitted well; the rest of the pool otherwise
        pr_raw = raws[PR]
        good = np.asarray(pr_raw["devices"])[np.asarray(pr_raw["fit_ok"], bool)]
        wn_pool = good if good.size else pool  # topped up from the whole pool when too few
        ok = np.asarray(pr_raw["fit_ok"], bool)
        bounds = (np.asarray(pr_raw["devices"])[ok], np.asarray(pr_raw["g_lo_s"])[ok], np.asarray(pr_raw["g_hi_s"])[ok])
        return measure_write_noise(board, p, target_s=g_min + pr.x_equilibrium * (g_max - g_min),
                                   window_s=g_max - g_min, pool=wn_pool, extra_pool=pool, read_noise_rel=rn.read_noise_rel,
                                   step_mid_s=pr.step_mid_s["set"], model=pr.fits, device_bounds_s=bounds,
                                   progress=tick)
    if name == DRIFT:
        return measure_drift(board, p, g_min_s=g_min, g_max_s=g_max, pool=pool, read_noise_rel=rn.read_noise_rel,
                             progress=tick)
    raise ValueError(f"unknown stage {name!r}")


def _report(board: Board, params: CalibrationParams, identity: dict, set_p: PulseProfile, reset_p: PulseProfile,
            results: dict, raws: dict) -> CalibrationReport:
    rn: ReadNoiseResult = results[RN]
    st: StuckResult = results[STUCK]
    pr: PulseResponseResult = results[PR]
    wn: WriteNoiseResult = results[WN]
    dr: DriftResult = results[DRIFT]
    rng = stage_rng(params.seed, "report")
    wraw = raws[WN]
    # step scale from the write-noise events (see the module docstring)
    scale, scale_se, step, step_se, fits = {}, {}, {}, {}, {}
    for pol in ("set", "reset"):
        rho = np.asarray(wraw[f"step_scale_{pol}"], float)
        own = np.asarray(wraw["own_window"], bool) if "own_window" in wraw else np.zeros(rho.size, bool)
        # devices normalised on their own window give the step at their own mid-window (see write_noise)
        rho = rho[np.isfinite(rho) & own] if np.count_nonzero(np.isfinite(rho) & own) >= 16 else rho[np.isfinite(rho)]
        scale[pol] = float(rho.mean())
        scale_se[pol] = float(rho.std(ddof=1) / np.sqrt(rho.size))
        step[pol] = pr.step_mid_s[pol] * scale[pol]
        step_se[pol] = float(np.hypot(pr.step_mid_s[pol] * scale_se[pol],
                                      _step_model_sigma(pr, wraw, pol, 0.5 * wn.write_noise_sigma_s)))
        f = pr.fits[pol]
        fits[pol] = SoftBoundsFit(alpha_s=f.alpha_s * scale[pol], gamma=f.gamma, g_min_s=f.g_min_s, g_max_s=f.g_max_s)
    c2c_s = wn.c2c_sigma_rel * step["set"]
    c2c_se = float(np.hypot(wn.c2c_sigma_rel_sigma * step["set"], wn.c2c_sigma_rel * step_se["set"]))
    th = delta_g_threshold(step_mid_s=step, step_mid_sigma_s=step_se, write_noise_s=wn.write_noise_sigma_s,
                           c2c_rel=wn.c2c_sigma_rel, boot_s=np.asarray(wraw["boot_sigma_w_s"]),
                           boot_c2c_rel=np.asarray(wraw["boot_c2c_rel"]), relax_sigma0_s=wn.relax_sigma0_s,
                           boot_relax_sigma0_s=np.asarray(wraw["boot_relax_sigma0_s"]), k=params.k,
                           drift_delay_s=params.drift_delay_s, drift_sigma1_s=dr.sigma1_s,
                           drift_sigma1_sigma_s=dr.sigma1_sigma_s, drift_t0_s=dr.t0_s, rng=rng)
    praw = raws[PR]
    g_end = np.asarray(praw["g_set_end_fit_s"]) if "g_set_end_fit_s" in praw else None
    dd = d2d_mod.device_to_device(
        rho={"set": np.asarray(wraw["step_scale_set"]), "reset": np.asarray(wraw["step_scale_reset"])},
        rho_var={"set": np.asarray(wraw["step_scale_set_var"]), "reset": np.asarray(wraw["step_scale_reset_var"])},
        fit_ok=np.asarray(praw["fit_ok"], bool), g_hi_s=np.asarray(praw["g_hi_s"]), g_lo_s=np.asarray(praw["g_lo_s"]),
        g_end_set_s=g_end, rng=rng)
    samples = {name: results[name].sample.model_dump() for name in STAGES}
    samples["pulses_total"] = int(sum(results[n].sample.pulses_total for n in STAGES))
    samples["devices_in_raw_file"] = {name: f"/stages/{name}/devices" for name in (RN, PR, WN, DRIFT)}
    unc = {
        "delta_g_th_s": th.delta_g_th_sigma_s,
        "write_noise_sigma_s": wn.write_noise_sigma_sigma_s,
        "c2c_sigma_s": c2c_se,
        "c2c_sigma_rel": wn.c2c_sigma_rel_sigma,
        "pulse_step_mean_s.set": step_se["set"],
        "pulse_step_mean_s.reset": step_se["reset"],
        "read_noise_rel": rn.read_noise_rel_sigma,
        "drift.mu_s": dr.mu_sigma_s,
        "drift.sigma0_s": wn.relax_sigma0_sigma_s,
        "drift.sigma1_s": dr.sigma1_sigma_s,
        "stuck_fraction": st.stuck_fraction_sigma,
        "d2d_cv": dd.step_cv_sigma["set"],
        "window_s.g_min_s": pr.window_sigma_s["g_min_s"],
        "window_s.g_max_s": pr.window_sigma_s["g_max_s"],
    }
    def scaled(values: list[float | None], k: float) -> list[float | None]:
        return [None if v is None else v * k for v in values]

    curves = {pol: {"g_s": c.g_s, "step_mean_s": scaled(c.step_mean_s, scale[pol]),
                    "step_sd_s": scaled(c.step_sd_s, scale[pol])} for pol, c in pr.curves.items()}
    return CalibrationReport(
        software_version=software_version(),
        board=identity,
        profiles={"set": set_p.model_dump(), "reset": reset_p.model_dump()},
        delta_g_th_s=th.delta_g_th_s, delta_g_th_k=params.k, delta_g_th_pulses=th.quantum_pulses,
        delta_g_th_pulses_by_polarity=th.quantum_pulses_by_polarity, delta_g_th_by_polarity=th.by_polarity,
        write_noise_sigma_s=wn.write_noise_sigma_s, c2c_sigma_s=c2c_s, c2c_sigma_rel=wn.c2c_sigma_rel,
        pulse_step_mean_s=step, pulse_response=fits, pulse_step_curve=curves,
        read_noise_rel=rn.read_noise_rel,
        drift=DriftModel(mu_s=dr.mu_s, sigma0_s=wn.relax_sigma0_s, sigma1_s=dr.sigma1_s, t0_s=dr.t0_s,
                         per_level=[lv.model_dump() for lv in dr.per_level]),
        drift_delay_s=params.drift_delay_s,
        stuck_fraction=st.stuck_fraction,
        stuck={"n_stuck": st.n_stuck, "n_stuck_high": st.n_stuck_high, "n_stuck_low": st.n_stuck_low,
               "n_devices": st.n_devices, "map": f"/stages/{STUCK}/stuck"},
        d2d_cv=dd.step_cv["set"], d2d=dd.model_dump(),
        window_s=dict(pr.window_s), uncertainty=unc, sample=samples,
        stages={name: results[name].model_dump(mode="json") for name in STAGES} | {
            "step_scale": {"from": "write_noise per-device mean change / pulse-response model", "set": scale["set"],
                           "reset": scale["reset"]}},
        params=params.model_dump(mode="json"),
    )


def _step_model_sigma(pr: PulseResponseResult, wraw: Raw, pol: str, bound_allowance_s: float = 0.0) -> float:
    """Uncertainty of the step at mid-window from the pulse-response model's shape and window.

    The step at mid-window is the steps measured near the SET/RESET balance (write-noise stage)
    carried to mid-window by the model: ``mean_i(rho_i mu(G_i)) * mu(mid) / mu(G_i)``, so it moves with
    gamma (by ``(0.5 / (1 - x_i))**gamma``) and with the window that places ``x_i``.  Each of gamma,
    g_min and g_max is moved by its standard error, the others held (central differences), and the
    changes are added in quadrature.  ``bound_allowance_s`` is added to the bounds' errors in
    quadrature: a curve at its bound is kicked by the persistent write error of every event and
    clipped there, so the bound it shows sits ~0.3-0.7 sigma_w inside the true one (the
    emulator's clip; seen as steps off by ~5 % at gamma ~ 1.8 and sigma_w ~ 3 uS).
    """
    rho = np.asarray(wraw[f"step_scale_{pol}"], float)
    sign = +1 if pol == "set" else -1
    cells = np.asarray(wraw["cell_polarity"]) == sign
    g_i = np.asarray(wraw["cell_mean_pre_g"])[cells].mean(axis=0)
    ok = np.isfinite(rho) & np.isfinite(g_i)
    own = ok & np.asarray(wraw["own_window"], bool) if "own_window" in wraw else ok
    ok = own if np.count_nonzero(own) >= 16 else ok
    if not ok.any():
        return 0.0
    rho, g_i = rho[ok], g_i[ok]
    f0 = pr.fits[pol]

    def step(fit: SoftBoundsFit) -> float:
        w0, w1 = f0.g_max_s - f0.g_min_s, fit.g_max_s - fit.g_min_s
        # as the write-noise stage: states outside the window are normalised just inside it
        m0 = model_step(f0, pol, np.clip(g_i, f0.g_min_s + 0.02 * w0, f0.g_max_s - 0.02 * w0))
        m1 = model_step(fit, pol, np.clip(g_i, fit.g_min_s + 0.02 * w1, fit.g_max_s - 0.02 * w1))
        mid = model_step(fit, pol, np.array([0.5 * (fit.g_min_s + fit.g_max_s)]))[0]
        return float(np.mean(rho * m0 / np.where(m1 > 0, m1, np.nan)) * mid)

    var = 0.0
    for field, sd in (("gamma", pr.gamma_sigma.get(pol, 0.0)),
                      ("g_min_s", float(np.hypot(pr.window_sigma_s["g_min_s"], bound_allowance_s))),
                      ("g_max_s", float(np.hypot(pr.window_sigma_s["g_max_s"], bound_allowance_s)))):
        if not np.isfinite(sd) or sd <= 0:
            continue
        hi = step(f0.model_copy(update={field: getattr(f0, field) + sd}))
        lo = step(f0.model_copy(update={field: getattr(f0, field) - sd}))
        if np.isfinite(hi) and np.isfinite(lo):
            var += (0.5 * (hi - lo)) ** 2
    return float(np.sqrt(var))


def pulses_per_device(rows: int, cols: int, sp: dict, results: dict, raws: dict) -> np.ndarray:
    """(rows, cols) map of the pulses each device received in the stages (write-verify not counted:
    the board reports only its total, given in each stage's sample description)."""
    total = np.zeros(rows * cols, dtype=np.int64)
    total += 2 * sp[STUCK].n_pulses
    pr = sp[PR]
    total[np.asarray(raws[PR]["devices"])] += pr.precondition_pulses + 2 * int(event_pulses(pr).sum())
    wn_raw = raws[WN]
    total[np.asarray(wn_raw["devices"])] += int(np.abs(np.asarray(wn_raw["event_pulses"])).sum())
    total[np.asarray(raws[DRIFT]["devices"])] += sp[DRIFT].release_pulses
    return total.reshape(rows, cols)


def write_plots(out: Path, results: dict, raws: dict, report: CalibrationReport | None = None) -> list[Path]:
    """The calibration's PNGs (whatever stages are present)."""
    from calibration import plots

    paths = []
    if RN in results:
        paths.append(plots.plot_read_noise(results[RN], raws[RN], out / "read_noise.png"))
    if STUCK in results:
        r = raws[STUCK]
        paths.append(plots.plot_conductance_map(np.asarray(r["g_before"]), out / "conductance_map.png",
                                                stuck=np.asarray(r["stuck"]), title="conductance before calibration"))
    if PR in results:
        paths.append(plots.plot_pulse_response(results[PR], raws[PR], out / "pulse_response.png",
                                               fits=report.pulse_response if report else None))
    if WN in results:
        paths.append(plots.plot_write_noise(results[WN], raws[WN], out / "write_noise.png"))
    if DRIFT in results:
        paths.append(plots.plot_drift(results[DRIFT], raws[DRIFT], out / "drift.png"))
    return paths
