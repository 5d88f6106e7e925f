"""Write noise: spread of the change achieved by write events of n pulses, for several n.

Design.  A sample of devices is programmed (write-verify) to the level where the
mean SET and RESET steps balance, given one discarded write event (so that no
measured event starts from a verify read that was *selected* for being within
tolerance), then for every ``n`` in ``pulse_counts`` ``cycles`` x (``n`` RESET
pulses, read, ``n`` SET pulses, read).  Every pulse batch is one write event.

What a change contains.  Between the (averaged) reads before and after an event of
``n`` pulses on device ``i``::

    d = n*mu_i(G) + c2c  +  (e_after - e_before)  +  read noise
    var(d) = 2 s^2 + sigma_rel^2 * n * mu_i(G)^2 + read + (state wandering)

where ``s`` is the per-event write offset -- which on real devices and on the
emulator includes the relaxation spread at t ~ 0, i.e. ``s = sqrt(sigma_w^2 +
sigma_r0^2)`` -- and ``sigma_rel`` the relative cycle-to-cycle spread of one pulse.
The analysis therefore

* takes variances within each device (per ``n`` and polarity), so the
  device-to-device spread of the mean change never counts as noise;
* subtracts the read-noise variance of both averaged reads (measured relative
  read noise times the conductances read, plus quantisation);
* removes the state dependence: the device's state wanders between events (earlier
  events' cycle-to-cycle noise) and the mean change depends on the state (soft
  bounds), so successive events of a device are negatively correlated (a deviation
  is partly undone by the next events) and the plain within-device variance is
  inflated (~7 % at n = 16 for 8 events).  Every change is therefore replaced by
  its residual given the pre-event read, ``d - beta (Y_pre - mean Y_pre)``, with
  ``beta = d E[d] / dG = -(1 - (1 - kappa)^n)`` from the pulse-response fit
  (``kappa``: relative decrement per pulse of the distance to the bound).  The
  pre-event read's offset and read noise then enter with weight
  ``(pol + beta)^2`` instead of 1, which the fit accounts for exactly.  (A
  data-only instrumental-variable slope is biased here: with a handful of events
  per device, demeaning couples each instrument read to a neighbouring change.);
* regresses the corrected variances on ``Q = n mu_0^2 (1-kappa)^(2(n-1))``, the
  cycle-to-cycle variance per unit ``sigma_rel^2`` of an event of n pulses that
  starts where one pulse steps ``mu_0``: the soft bound pulls back part of each
  earlier pulse's deviation within the event (~``(n-1) kappa`` of the variance at
  n pulses).  ``mu_0`` is the device's own step at its pre-event state: the
  population model scaled by a per-device factor estimated from all the device's
  events of that polarity (inverse-variance weighted, so the large-n events pin it
  down; the bias of its square is removed).  Pooled over devices per
  (n, polarity): ``V = s^2 K + sigma_rel^2 Q`` with ``K = 1 + (pol + beta)^2``.
  Normalising by each device's own step puts devices, states and both polarities on
  one line, so the device-to-device spread of the step never counts as noise.

The per-device step factors ``rho_i`` (mean change over many events, relative to
the model: a linear, unbiased statistic) are also returned: the calibration uses
their mean to fix the scale of the pulse-response model, and their spread for the
device-to-device CV.

Reported: ``s`` (``write_noise_sigma_s``), ``sigma_rel`` and, with the mean step at
mid-window from the pulse response, the absolute cycle-to-cycle spread
``sigma_c2c = sigma_rel * mu_mid``, so that one write event of ``n`` pulses at
mid-window has ``sigma(n)^2 = s^2 + n sigma_c2c^2``.  The classic pooled
``var(n)`` per polarity (corrected, absolute) is kept for plots together with its own
straight-line fit.  Uncertainties: bootstrap over devices.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from calibration.common import (
    Measured,
    ProcedureParams,
    Progress,
    Raw,
    SampleInfo,
    bootstrap_indices,
    choose_devices,
    pulse_devices,
    quantisation_var,
    read_mean,
    split_flat,
    stage_rng,
)
from calibration.fits import weighted_line
from calibration.pulse_response import model_step
from calibration.report import SoftBoundsFit
from drivers.board import Board

STAGE = "write_noise"


class WriteNoiseParams(ProcedureParams):
    n_devices: int = Field(2048, ge=16, description="devices in the sample")
    pulse_counts: tuple[int, ...] = Field((1, 2, 4, 8, 16, 32), min_length=2, description="pulses per write event")
    cycles: int = Field(10, ge=3, description="RESET+SET event pairs per pulse count")
    n_reads: int = Field(2, ge=1, description="reads averaged after each write event")
    program_tolerance_rel: float = Field(0.03, gt=0, description="write-verify tolerance, fraction of the window")
    program_max_iter: int = Field(30, ge=1, le=1000)
    wandering_correction: bool = Field(True, description="take each change's residual given its pre-event state "
                                                         "(needs the pulse-response model)")
    n_boot: int = Field(200, ge=10)


class CellStats(BaseModel):
    """Pooled figures of the events with one pulse count and polarity."""

    n: int
    polarity: str
    var_raw_s2: float = Field(description="mean within-device variance of the change")
    var_read_s2: float = Field(description="read-noise part, subtracted")
    var_wander_s2: float = Field(description="removed by taking residuals given the pre-event state")
    var_s2: float = Field(description="corrected variance of the change between two reads: 2 s^2 + c2c")
    q_s2: float = Field(description="mean over devices of n mu_0^2 (1-kappa)^(2(n-1)) (c2c variance / sigma_rel^2)")
    mean_change_s: float
    beta: float = Field(description="dE[change]/dG from the pulse-response model at the cell's mean state")


class WriteNoiseResult(BaseModel):
    write_noise_sigma_s: float = Field(description="per-event write offset s (sigma_w, incl. relaxation at t~0)")
    write_noise_sigma_sigma_s: float
    c2c_sigma_rel: float = Field(description="relative cycle-to-cycle spread of one pulse's step")
    c2c_sigma_rel_sigma: float
    c2c_sigma_s: float | None = Field(None, description="sigma_rel * mean SET step at mid-window")
    c2c_sigma_sigma_s: float | None = None
    by_polarity: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="classic fit var(n) = 2 s^2 + n sigma_abs^2 of the pooled changes")
    cells: list[CellStats]
    target_s: float
    programmed_fraction: float
    read_noise_rel_used: float
    sample: SampleInfo


def measure_write_noise(board: Board, params: WriteNoiseParams | None = None, *,
                        target_s: float, window_s: float, pool: np.ndarray | None = None,
                        read_noise_rel: float, step_mid_s: float | None = None,
                        model: dict[str, SoftBoundsFit] | None = None, progress: Progress = None) -> Measured:
    """Measure the change of write events of ``n`` pulses for every n of ``params.pulse_counts``.

    ``target_s``: level to program the devices to first (where SET and RESET balance);
    ``window_s``: g_max - g_min (for the programming tolerance); ``read_noise_rel``:
    measured relative read noise (subtracted); ``step_mid_s``: mean SET step at
    mid-window (to express the cycle-to-cycle spread in siemens); ``model``: the
    pulse-response fits by polarity (for the state-wandering correction; none without).
    """
    params = params or WriteNoiseParams()
    rng = stage_rng(params.seed, STAGE)
    flat = choose_devices(board, params.n_devices, rng, pool, what="the write-noise sample")
    limit = board.limits.max_pulses_per_device
    if max(params.pulse_counts) > limit:
        raise ValueError(f"write-noise pulse count {max(params.pulse_counts)} exceeds the board's "
                         f"max_pulses_per_device ({limit})")
    rows, cols = split_flat(board, flat)
    prog = board.program(rows, cols, np.full(flat.size, target_s), params.program_tolerance_rel * window_s,
                         params.program_max_iter)
    if progress:
        progress(1.0)
    r = params.n_reads
    events_n, events_pol = [params.pulse_counts[0]], [+1]  # event 0: the discarded one
    for n in params.pulse_counts:
        for _ in range(params.cycles):
            events_n += [n, n]
            events_pol += [-1, +1]
    y = np.empty((len(events_n) + 1, flat.size))
    y[0] = read_mean(board, flat, r)
    pulses = np.zeros(flat.size, dtype=np.int64)
    for t, (n, pol) in enumerate(zip(events_n, events_pol)):
        pulse_devices(board, flat, pol * n)
        pulses += n
        y[t + 1] = read_mean(board, flat, r)
        if progress and t % 2 == 0:
            progress(1.0)
    n_arr, pol_arr = np.array(events_n), np.array(events_pol)
    result, arrays = analyse_write_noise(y, n_arr, pol_arr, params, read_noise_rel, quantisation_var(board),
                                         step_mid_s, rng, model)
    result.target_s = float(target_s)
    result.programmed_fraction = prog.converged_fraction
    result.sample = SampleInfo.from_counts(
        pulses, "uniform random over responsive devices (pulse-response sample when possible); write-verify "
        f"to the start level used {prog.pulses} more pulses in all", len(events_n))
    raw = Raw()
    raw.add("devices", flat, "flat index (row*cols+col)")
    raw.add("g", y, "S")
    raw.add("event_pulses", n_arr, "pulses")
    raw.add("event_polarity", pol_arr, "+1 SET / -1 RESET")
    raw.add("program_achieved", prog.achieved_s, "S")
    raw.add("program_converged", prog.converged, "bool")
    raw.add("program_pulses_total", np.int64(prog.pulses), "pulses")
    for name, (arr, unit) in arrays.items():
        raw.add(name, arr, unit)
    return Measured(result, raw)


def _cell_arrays(y: np.ndarray, n_arr: np.ndarray, pol_arr: np.ndarray, n: int, pol: int):
    """Event indices, changes in the pulsed direction (J, N) and pre-event reads of one (n, polarity)."""
    t = np.flatnonzero((n_arr == n) & (pol_arr == pol))
    t = t[t >= 1]  # event 0 is discarded
    return t, pol * (y[t + 1] - y[t]), y[t]


def decrement(fit: SoftBoundsFit, polarity: int, g_s: np.ndarray) -> np.ndarray:
    """``kappa = -d mu / dG``: relative decrement per pulse of the distance to the bound pulsed towards."""
    w = fit.g_max_s - fit.g_min_s
    x = np.clip((np.asarray(g_s, float) - fit.g_min_s) / w, 1e-6, 1 - 1e-6)
    dist = (1 - x) if polarity > 0 else x
    return np.clip(fit.alpha_s * fit.gamma * dist ** (fit.gamma - 1) / w, 0.0, 0.5)


def change_slope(kappa: np.ndarray, polarity: int, n: int) -> np.ndarray:
    """``d E[change of n pulses] / dG`` (change counted in the pulsed direction)."""
    return -polarity * (1.0 - (1.0 - kappa) ** n)


def analyse_write_noise(y: np.ndarray, n_arr: np.ndarray, pol_arr: np.ndarray, params: WriteNoiseParams,
                        read_noise_rel: float, q_var: float, step_mid_s: float | None,
                        rng: np.random.Generator, model: dict[str, SoftBoundsFit] | None = None):
    """Residual within-device variances per (n, polarity) and the fit ``V = s^2 K + sigma_rel^2 Q``."""
    r = params.n_reads
    s_rd2 = read_noise_rel**2
    cells = []
    for n in params.pulse_counts:
        for pol in (+1, -1):
            t, d, pre = _cell_arrays(y, n_arr, pol_arr, n, pol)
            pre_mean = pre.mean(axis=0)
            if model is not None:
                fit_p = model["set" if pol > 0 else "reset"]
                kappa0 = decrement(fit_p, pol, pre_mean)
                mu_model = model_step(fit_p, "set" if pol > 0 else "reset", pre_mean)
            else:
                kappa0, mu_model = np.zeros(d.shape[1]), np.ones(d.shape[1])
            cells.append(dict(n=n, pol=pol, j=d.shape[0], t=t, d=d, pre=pre, pre_mean=pre_mean, kappa0=kappa0,
                              mu_model=mu_model, m=d.mean(axis=0), raw=d.var(axis=0, ddof=1)))

    # Every device's step relative to the population model (rho_i), per polarity, from all its cells:
    # the mean change of n pulses is rho_i * mu_model * S1(kappa_i, n), S1 = (1 - (1-kappa)^n) / kappa,
    # and the decrement kappa_i = rho_i * kappa_model is the device's own (it scales with its step), so
    # iterate.  Inverse-variance weights: the large-n cells pin rho_i down.
    rho = {+1: np.ones(y.shape[1]), -1: np.ones(y.shape[1])}
    rho_var = {+1: np.zeros(y.shape[1]), -1: np.zeros(y.shape[1])}
    for _ in range(3):
        for c in cells:
            kappa = np.clip(c["kappa0"] * np.clip(rho[c["pol"]], 0.05, 5.0), 0.0, 0.5)
            q1 = 1.0 - kappa
            c["kappa"] = kappa
            c["scale"] = c["mu_model"] * np.where(kappa > 1e-12, (1.0 - q1 ** c["n"]) / np.maximum(kappa, 1e-12),
                                                  float(c["n"]))
        for pol in (+1, -1):
            num = den = 0.0
            for c in cells:
                if c["pol"] == pol:
                    w = c["scale"] ** 2 * c["j"] / max(float(c["raw"].mean()), 1e-30)
                    num = num + w * c["m"] / c["scale"]
                    den = den + w
            rho[pol], rho_var[pol] = num / den, 1.0 / den
        if model is None:
            break
    for c in cells:
        n, pol, d, pre, t = c["n"], c["pol"], c["d"], c["pre"], c["t"]
        kappa = c["kappa"]
        beta = change_slope(kappa, pol, n) if params.wandering_correction else np.zeros(d.shape[1])
        # residual of each change given its pre-event state: removes the state dependence of the
        # mean change and, with it, the negative correlation between a device's successive events
        res = d - beta * (pre - c["pre_mean"])
        coef = (pol + beta) ** 2  # weight of the pre-event read's offset and read noise in ``res``
        rv_after = (s_rd2 * (y[t + 1] ** 2).mean(axis=0) + q_var) / r
        rv_before = (s_rd2 * (pre**2).mean(axis=0) + q_var) / r
        # cycle-to-cycle variance per unit sigma_rel^2: n mu_0^2 (1-kappa)^(2(n-1)), mu_0 = rho_i mu_model
        c.update(v=res.var(axis=0, ddof=1), rv=rv_after + coef * rv_before, k=1.0 + coef, beta=beta,
                 q=n * (1.0 - kappa) ** (2 * (n - 1)) * c["mu_model"] ** 2 * (rho[pol] ** 2 - rho_var[pol]))

    def fit(idx: np.ndarray | None):
        """(s^2, sigma_rel^2, per-cell V, Q, K) for the devices ``idx`` (bootstrap)."""
        sel = slice(None) if idx is None else idx
        vs, qs, ks = [], [], []
        for c in cells:
            vs.append(float((c["v"][sel] - c["rv"][sel]).mean()))
            qs.append(float(c["q"][sel].mean()))
            ks.append(float(c["k"][sel].mean()))
        vs_a, design = np.array(vs), np.stack([ks, qs], axis=1)
        w = 1.0 / np.maximum(vs_a, 1e-30)
        coef, *_ = np.linalg.lstsq(design * w[:, None], vs_a * w, rcond=None)
        return float(coef[0]), float(coef[1]), vs, qs, ks

    s2, c_slope, vs, qs, ks = fit(None)
    s = float(np.sqrt(max(s2, 0.0)))
    sig_rel = float(np.sqrt(max(c_slope, 0.0)))
    n_dev = y.shape[1]
    boot = bootstrap_indices(rng, n_dev, params.n_boot)
    bs, br = [], []
    for idx in boot:
        s2_b, c_b, *_ = fit(idx)
        bs.append(np.sqrt(max(s2_b, 0.0)))
        br.append(np.sqrt(max(c_b, 0.0)))
    s_sig, r_sig = float(np.std(bs, ddof=1)), float(np.std(br, ddof=1))

    stats = []
    for c, vm, qm, km in zip(cells, vs, qs, ks):
        stats.append(CellStats(n=c["n"], polarity="set" if c["pol"] > 0 else "reset",
                               var_raw_s2=float(c["raw"].mean()), var_read_s2=float(c["rv"].mean()),
                               var_wander_s2=float(c["raw"].mean() - c["v"].mean()),
                               var_s2=vm + (2.0 - km) * s2, q_s2=qm, mean_change_s=float(c["m"].mean()),
                               beta=float(c["beta"].mean())))
    by_pol = {}
    for pol in ("set", "reset"):
        ns = np.array([c.n for c in stats if c.polarity == pol], float)
        vv = np.array([c.var_s2 for c in stats if c.polarity == pol])
        a, b, _ = weighted_line(ns, vv, 1.0 / vv**2)
        by_pol[pol] = {"offset_var_s2": a, "sigma_w_s": float(np.sqrt(max(a / 2, 0.0))),
                       "sigma_abs_s": float(np.sqrt(max(b, 0.0))), "slope_s2": b}
    result = WriteNoiseResult(
        write_noise_sigma_s=s, write_noise_sigma_sigma_s=s_sig, c2c_sigma_rel=sig_rel, c2c_sigma_rel_sigma=r_sig,
        c2c_sigma_s=None if step_mid_s is None else sig_rel * step_mid_s,
        c2c_sigma_sigma_s=None if step_mid_s is None else r_sig * step_mid_s,
        by_polarity=by_pol, cells=stats, target_s=0.0, programmed_fraction=0.0,
        read_noise_rel_used=float(read_noise_rel), sample=SampleInfo(n_devices=n_dev, selection=""),
    )
    step_unit = "1 (x population model)" if model is not None else "S per pulse"
    arrays = {"step_scale_set": (rho[+1], step_unit), "step_scale_set_var": (rho_var[+1], step_unit + "^2"),
              "step_scale_reset": (rho[-1], step_unit), "step_scale_reset_var": (rho_var[-1], step_unit + "^2"),
              "cell_pulses": (np.array([c["n"] for c in cells]), "pulses"),
              "cell_polarity": (np.array([c["pol"] for c in cells]), "+1 SET / -1 RESET"),
              "cell_mean_change": (np.stack([c["m"] for c in cells]), "S"),
              "cell_mean_pre_g": (np.stack([c["pre_mean"] for c in cells]), "S"),
              "boot_sigma_w_s": (np.array(bs), "S"), "boot_c2c_rel": (np.array(br), "1")}
    return result, arrays
