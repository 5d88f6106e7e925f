"""Write-noise analysis: the moment fit of ``(sigma_w^2, sigma_r0^2, sigma_rel^2)`` from the changes of write events.

The measurement is :mod:`calibration.write_noise`; this module turns the reads around
every write event into the stage's result.

What a change contains.  Between the (averaged) reads before and after an event of
``n`` pulses on device ``i``::

    d = n*mu_i(G) + c2c + w  +  (r_after - r_before)  +  read noise
    var(d) = sigma_w^2 + sigma_rel^2 * n * mu_i(G)^2 + 2 sigma_r0^2 + read + (state wandering)

where ``w`` (spread ``sigma_w``) is the persistent write error of the event -- it
stays in the state, so it enters the change once, like cycle-to-cycle noise -- and
``r`` (spread ``sigma_r0``) the relaxation offset at t ~ 0, redrawn at each event
and seen only by reads, so it enters like a read offset: in this change and, with
the opposite sign, in the next.  That makes successive changes of a device
correlated by ``sigma_r0^2`` while ``w`` leaves them uncorrelated, which is what
separates the two.  ``sigma_rel`` is the relative cycle-to-cycle spread of one pulse.
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
* regresses the corrected variances on ``Q``, the cycle-to-cycle variance per unit
  ``sigma_rel^2`` of an event of n pulses from its pre-event state:
  ``sum_k mu_k^2 prod_{j>k} (1 - kappa_j)^2`` along the event's mean path (pulse k
  steps ``mu_k``; the soft bound pulls back part of each earlier pulse's deviation
  within the event), ``n mu_0^2 (1-kappa)^(2(n-1))`` for a linear bound
  (:func:`_c2c_path_factor`).  The steps are the device's own: the population model
  scaled by a per-device factor, and that factor's square is estimated from the
  device's *later* events only (:func:`_c2c_designs`: the all-event factor's error is
  correlated with the pre-event states, which biased ``Q`` low and ``sigma_rel``
  high).  Pooled over devices per
  (n, polarity): ``V = sigma_w^2 + sigma_r0^2 K + sigma_rel^2 Q`` with
  ``K = 1 + (pol + beta)^2``.  Normalising by each device's own step puts devices,
  states and both polarities on one line, so the device-to-device spread of the step
  never counts as noise;
* adds the lag-1 covariance of successive residuals, ``a_t (sigma_r0^2 + read)`` with
  ``a_t = -pol_t (pol_{t+1} + beta_{t+1})``, estimated from products of differences of
  same-cell events two apart (each device's cell means cancel), for the pulse counts
  whose state correction is small (|beta| <= 0.15: an error in beta would leak write
  and cycle-to-cycle noise into it);
* fits ``(sigma_w^2, sigma_r0^2, sigma_rel^2) >= 0`` to all rows by weighted least
  squares (weights: the inverse variance of each row's device mean).  Devices whose
  statistics are not finite are left out; a device outside the population window is
  normalised by the model just inside it (never by a zero step);
* errors: a bootstrap over devices, widened by the fit's Birge ratio where it is above 1
  (the rows, the fit and its errors are :mod:`calibration.write_noise_moments`'s).  The
  pulse-response model the designs use is held fixed: moving its gamma or bounds by their
  standard errors moved ``sigma_rel`` by at most 0.15 % in 8 property-test sets checked
  (the per-device step factors absorb it), far below its bootstrap error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

from calibration.common import SampleInfo
from calibration.report import SoftBoundsFit
from calibration.write_noise_cells import CellStats, cell_stats, classic_fits
from calibration.write_noise_moments import (
    MomentFit,
    Rows,
    lag1_summary,
    moment_fit,
    moment_rows,
)
from calibration.write_walk import WalkResult

if TYPE_CHECKING:
    from calibration.write_noise import WriteNoiseParams


class WriteNoiseResult(BaseModel):
    write_noise_sigma_s: float = Field(description="persistent write error of one event, sigma_w: the moment fit "
                                       "and the random walk combined (inverse-variance weights)")
    write_noise_sigma_sigma_s: float
    moment_sigma_w_s: float | None = Field(None, description="diagnostic: sigma_w of the moment fit alone")
    moment_sigma_w_sigma_s: float | None = None
    walk: WalkResult | None = Field(None, description="the random-walk experiment (calibration.write_walk)")
    relax_sigma0_s: float = Field(0.0, description="read-visible relaxation offset redrawn at each event (t ~ 0)")
    relax_sigma0_sigma_s: float = 0.0
    c2c_sigma_rel: float = Field(description="relative cycle-to-cycle spread of one pulse's step")
    c2c_sigma_rel_sigma: float
    c2c_sigma_s: float | None = Field(None, description="sigma_rel * mean SET step at mid-window")
    c2c_sigma_sigma_s: float | None = None
    by_polarity: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="classic fit var(n) = offset + n sigma_abs^2 of the pooled changes "
                                          "(offset = sigma_w^2 + 2 sigma_r0^2)")
    cells: list[CellStats]
    lag1: list[dict] = Field(default_factory=list, description="lag-1 covariance rows of the fit")
    n_used: int = Field(0, description="sampled devices that entered the fit")
    fit_birge_ratio: float = Field(1.0, description="sqrt(chi^2/dof) of the moment fit against the rows' "
                                   "covariance; the bootstrap errors are widened by it where it is above 1")
    reads_per_event: int = Field(0, description="reads averaged after each event (chosen from the read noise)")
    devices_added: int = Field(0, description="devices added to the first sample because the noise asked for it")
    target_s: float
    programmed_fraction: float
    read_noise_rel_used: float
    sample: SampleInfo


def _cell_arrays(y: np.ndarray, n_arr: np.ndarray, pol_arr: np.ndarray, n: int, pol: int):
    """Event indices, changes in the pulsed direction (J, N) and pre-event reads of one (n, polarity)."""
    t = np.flatnonzero((n_arr == n) & (pol_arr == pol))
    t = t[t >= 1]  # event 0 is discarded
    return t, pol * (y[t + 1] - y[t]), y[t]


def device_model(fit: SoftBoundsFit, polarity: int, g_s: np.ndarray,
                  bounds_s: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """(kappa, mean step per pulse) of the model at each device's state ``g_s`` (devices along the last
    axis), on the device's own window where ``bounds_s`` knows it (the population window otherwise).

    A state outside the window still moves: it is normalised by the model just inside the window,
    never by a zero step.
    """
    n_dev = np.shape(g_s)[-1]
    lo, hi = np.full(n_dev, fit.g_min_s), np.full(n_dev, fit.g_max_s)
    if bounds_s is not None:
        own = np.isfinite(bounds_s[0]) & np.isfinite(bounds_s[1]) & (bounds_s[1] > bounds_s[0])
        lo[own], hi[own] = bounds_s[0][own], bounds_s[1][own]
    w = hi - lo
    x = np.clip((np.asarray(g_s, float) - lo) / w, 0.02, 0.98)
    dist = (1 - x) if polarity > 0 else x
    mu = fit.alpha_s * dist**fit.gamma
    kappa = np.clip(fit.alpha_s * fit.gamma * dist ** (fit.gamma - 1) / w, 0.0, 0.5)
    return kappa, mu


def change_slope(kappa: np.ndarray, polarity: int, n: int) -> np.ndarray:
    """``d E[change of n pulses] / dG`` (change counted in the pulsed direction)."""
    return -polarity * (1.0 - (1.0 - kappa) ** n)


def analyse_write_noise(y: np.ndarray, n_arr: np.ndarray, pol_arr: np.ndarray, params: WriteNoiseParams,
                        read_noise_rel: float, q_var: float, step_mid_s: float | None,
                        rng: np.random.Generator, model: dict[str, SoftBoundsFit] | None = None,
                        bounds_s: tuple[np.ndarray, np.ndarray] | None = None,
                        read_spread_s2: np.ndarray | None = None):
    """Moments of the residual changes and the fit of ``(sigma_w^2, sigma_r0^2, sigma_rel^2)``; see the module doc.

    ``bounds_s``: per-device (lower, upper) bounds (NaN: unknown, the population window is used).
    With them each device's step factor is relative to the model on its own window, so that the
    mean factor times the model's step at mid-window is the mean step at each device's own
    mid-window (a device's state sits at its own balance point, which moves with its window).
    ``read_spread_s2``: sample variance of the ``n_reads`` reads after every event, (events+1, devices);
    with it each device's read noise is its own, measured here (``read_noise_rel`` and ``q_var`` are then
    used only for a device without it).
    Returns (:class:`WriteNoiseResult` without the run's figures, {array name: (array, unit)}).
    """
    r = params.n_reads
    per_read_var = _per_read_variance(y, r, read_noise_rel, q_var, read_spread_s2)
    n_dev_all = y.shape[1]
    cells = [_cell(y, n_arr, pol_arr, n, pol, model, bounds_s) for n in params.pulse_counts for pol in (+1, -1)]
    rho, rho_var = _step_factors(cells, n_dev_all, model is not None)
    beta_of = _residuals(cells, rho, rho_var, per_read_var, r, params.wandering_correction)
    rows = moment_rows(cells, beta_of, per_read_var / r, n_arr, pol_arr, params.pulse_counts)
    usable = np.all(np.isfinite(rows.y), axis=0) & np.all(np.isfinite(rows.x), axis=(0, 1))
    for pol in (+1, -1):
        usable &= np.isfinite(rho[pol]) & (rho[pol] > 0)
    n_used = int(usable.sum())
    if n_used < 8:
        raise ValueError(f"write noise: only {n_used} of {n_dev_all} sampled devices gave a usable response "
                         "to the write events (no step or no read-out); the devices do not respond to the "
                         "pulse profiles, or nearly all are stuck")
    rows = Rows(rows.y[:, usable], rows.x[:, :, usable], rows.kind)
    fit = moment_fit(rows, rng, params.n_boot)
    stats = cell_stats(cells, rows, usable, fit.values[1])
    result = WriteNoiseResult(
        write_noise_sigma_s=fit.s, write_noise_sigma_sigma_s=fit.s_sig, relax_sigma0_s=fit.s_r0,
        relax_sigma0_sigma_s=fit.r0_sig, c2c_sigma_rel=fit.sig_rel, c2c_sigma_rel_sigma=fit.r_sig,
        c2c_sigma_s=None if step_mid_s is None else fit.sig_rel * step_mid_s,
        c2c_sigma_sigma_s=None if step_mid_s is None else fit.r_sig * step_mid_s,
        by_polarity=classic_fits(stats), cells=stats, lag1=lag1_summary(rows), n_used=n_used,
        fit_birge_ratio=fit.birge, target_s=0.0,
        programmed_fraction=0.0, read_noise_rel_used=float(read_noise_rel),
        sample=SampleInfo(n_devices=n_dev_all, selection=""),
    )
    arrays = _arrays(cells, rho, rho_var, usable, fit, bounds_s, model is not None)
    return result, arrays | _population_window_factors(y, n_arr, pol_arr, params, model, bounds_s, rho, usable)


def _population_window_factors(y: np.ndarray, n_arr: np.ndarray, pol_arr: np.ndarray, params: WriteNoiseParams,
                               model: dict[str, SoftBoundsFit] | None, bounds_s, rho: dict,
                               usable: np.ndarray) -> dict[str, tuple[np.ndarray, str]]:
    """Every sampled device's step factor on the *population* window (``step_scale_<pol>_pop``).

    The own-window factor is known only for the devices whose window the pulse-response stage
    fitted; the population-window one for every sampled device, measured from the same changes, so
    the two are closely correlated and the report combines them over the two samples (a regression
    estimator, :func:`calibration.report_builder.step_scale`).
    """
    pop = rho
    if model is not None and bounds_s is not None:
        cells = [_cell(y, n_arr, pol_arr, n, pol, model, None) for n in params.pulse_counts for pol in (+1, -1)]
        pop, _ = _step_factors(cells, y.shape[1], True)
    unit = "1 (x population model)" if model is not None else "S per pulse"
    return {f"step_scale_{name}_pop": (np.where(usable, pop[pol], np.nan), unit)
            for name, pol in (("set", +1), ("reset", -1))}


def _per_read_variance(y: np.ndarray, r: int, read_noise_rel: float, q_var: float,
                       read_spread_s2: np.ndarray | None) -> np.ndarray:
    """Variance of one read, (events+1, devices): each device's own where its reads' spread is known."""
    s_rd2 = read_noise_rel**2
    per_read_var = s_rd2 * y**2 + q_var
    if read_spread_s2 is not None and r >= 2:
        # each device's own read noise from the spread of the reads after every event (the relaxation offset
        # is common to them): relative, so that it follows the device's state; this stage's own measurement,
        # so that the bootstrap over devices carries its error
        with np.errstate(invalid="ignore", divide="ignore"):
            rel2 = np.nanmean(read_spread_s2, axis=0) / np.nanmean(y**2, axis=0)
        per_read_var = np.where(np.isfinite(rel2), rel2, s_rd2 + q_var / np.maximum(np.nanmean(y**2), 1e-30)) * y**2
    return per_read_var


def _cell(y: np.ndarray, n_arr: np.ndarray, pol_arr: np.ndarray, n: int, pol: int,
          model: dict[str, SoftBoundsFit] | None, bounds_s) -> dict:
    """The changes of the events of one (n, polarity) and the model at their states (a dict the steps fill in)."""
    t, d, pre = _cell_arrays(y, n_arr, pol_arr, n, pol)
    pre_mean = pre.mean(axis=0)
    if model is not None:
        fit_p = model["set" if pol > 0 else "reset"]
        kappa0, mu_model = device_model(fit_p, pol, pre_mean, bounds_s)
        # the model at every event's own pre-event state too: a device's state wanders by several
        # uS between events (its persistent write errors random-walk), and the step is convex in the
        # state (gamma > 1), so the mean step (and square step) over the events is not the step at
        # the mean state -- ~5 % at gamma 1.75 and sigma_w ~ 3 uS
        kappa0_e, mu_e = device_model(fit_p, pol, pre, bounds_s)
    else:
        kappa0, mu_model = np.zeros(d.shape[1]), np.ones(d.shape[1])
        kappa0_e, mu_e = np.zeros(d.shape), np.ones(d.shape)
    return {"n": n, "pol": pol, "j": d.shape[0], "t": t, "d": d, "pre": pre, "pre_mean": pre_mean,
            "fit": fit_p if model is not None else None, "bounds": bounds_s,
            "kappa0": kappa0, "mu_model": mu_model, "kappa0_e": kappa0_e, "mu_e": mu_e, "m": d.mean(axis=0),
            "raw": d.var(axis=0, ddof=1)}


def _step_factors(cells: list[dict], n_dev_all: int, with_model: bool) -> tuple[dict, dict]:
    """Every device's step relative to the population model (rho_i) and its variance, per polarity.

    The mean change of n pulses is rho_i * mu_model * S1(kappa_i, n), S1 = (1 - (1-kappa)^n) / kappa,
    and the decrement kappa_i = rho_i * kappa_model is the device's own (it scales with its step), so
    iterate.  Inverse-variance weights: the large-n cells pin rho_i down.
    """
    rho = {+1: np.ones(n_dev_all), -1: np.ones(n_dev_all)}
    rho_var = {+1: np.zeros(n_dev_all), -1: np.zeros(n_dev_all)}
    for _ in range(3):
        for c in cells:
            own = np.clip(np.nan_to_num(rho[c["pol"]], nan=1.0), 0.05, 5.0)
            c["own"] = own
            c["kappa"] = np.clip(c["kappa0"] * own, 0.0, 0.5)
            kappa_e = np.clip(c["kappa0_e"] * own, 0.0, 0.5)
            c["kappa_e"] = kappa_e
            s1 = np.where(kappa_e > 1e-12, (1.0 - (1.0 - kappa_e) ** c["n"]) / np.maximum(kappa_e, 1e-12),
                          float(c["n"]))
            c["scale"] = (c["mu_e"] * s1).mean(axis=0)  # mean over the events of the model's mean change / rho
        for pol in (+1, -1):
            num = den = 0.0
            for c in cells:
                if c["pol"] == pol:
                    w = c["scale"] ** 2 * c["j"] / max(float(np.nanmean(c["raw"])), 1e-30)
                    num = num + w * c["m"] / np.where(c["scale"] > 0, c["scale"], np.nan)
                    den = den + w
            with np.errstate(invalid="ignore", divide="ignore"):
                rho[pol], rho_var[pol] = num / den, 1.0 / den
        if not with_model:
            break
    return rho, rho_var


def _residuals(cells: list[dict], rho: dict, rho_var: dict, per_read_var: np.ndarray, r: int,
               wandering_correction: bool) -> dict[int, tuple[dict, int]]:
    """Each change's residual given its pre-event state, its variance and design terms (into the cells);
    returns event index -> (cell, position in the cell)."""
    beta_of = {}
    for c in cells:
        n, pol, d, pre, t = c["n"], c["pol"], c["d"], c["pre"], c["t"]
        kappa = c["kappa"]
        beta = change_slope(kappa, pol, n) if wandering_correction else np.zeros(d.shape[1])
        # residual of each change given its pre-event state: removes the state dependence of the
        # mean change and, with it, the negative correlation between a device's successive events
        res = d - beta * (pre - c["pre_mean"])
        coef = (pol + beta) ** 2  # weight of the pre-event read's offset and read noise in ``res``
        rv_after = per_read_var[t + 1].mean(axis=0) / r
        rv_before = per_read_var[t].mean(axis=0) / r
        c.update(res=res, v=res.var(axis=0, ddof=1), rv=rv_after + coef * rv_before, k=1.0 + coef, beta=beta)
        for j, tt in enumerate(t.tolist()):
            beta_of[tt] = (c, j)
    for pol in (+1, -1):
        _c2c_designs([c for c in cells if c["pol"] == pol], rho[pol], rho_var[pol])
    return beta_of


def _c2c_designs(cells: list[dict], rho: np.ndarray, rho_var: np.ndarray) -> None:
    """``q`` of every cell of one polarity: the mean over its events of the cycle-to-cycle variance per unit
    ``sigma_rel^2``, ``rho_i^2 x`` :func:`_c2c_path_factor` at the pre-event state.

    Why ``rho_i^2`` does not come from the device's all-event step factor ``rho`` (whose square, less its
    variance ``rho_var``, is unbiased by itself): that factor's error is the weighted mean of the device's
    cycle-to-cycle and write deviations, and each deviation stays in the state.  A device whose SET events
    happened to overshoot has a high factor *and* later pre-event states nearer its upper bound, where
    the SET step -- hence the cycle-to-cycle variance -- is smaller, so ``rho^2 mu(G_t)^2`` averages low
    although each factor is unbiased.  On the emulator's own states (true model, 128x128) that made
    ``q`` 1-3.5 % low at n = 8-16 and ``sigma_rel`` high: +1.5 % at sigma_c2c = 2, +1 % at 1.4 and
    sigma_w = 0.2 uS (where its bootstrap error is 0.3 %: the truth outside 2 sigma in most such sets),
    ~+2 % with sigma_w ~ 2.8 uS.

    So each event's ``rho_i^2`` is the mean over pairs of distinct *later* events (same polarity) of
    ``u_1 u_2``, ``u`` = the change over the model's mean change from that event's own pre-event state
    (one weight per cell: its inverse variance).  Each later ``u`` is ``rho_i`` plus a deviation drawn
    after everything before it, with zero mean given it (a martingale difference), so
    ``E[u_1 u_2 | G_t] = rho_i^2`` exactly: no variance to subtract, and no correlation with the state
    ``G_t`` whose step the event's ``q`` uses.  The soft bound's slope along the path scales with the
    device's step too; that factor comes from the *earlier* events, independent of the later ones (its
    own correlation with ``G_t`` enters only through the slope, a second-order effect: ~-0.2 % on
    ``sigma_rel`` in the same checks).  An event with fewer than two later (no earlier) events of its
    polarity uses the all-event factor, ``rho^2 - rho_var`` (``rho``).  The bootstrap over devices
    resamples these designs with their devices, so their extra noise is in the reported error.
    """
    if not cells:
        return
    with_model = cells[0]["fit"] is not None
    order = np.argsort(np.concatenate([c["t"] for c in cells]), kind="stable")
    n_dev = rho.size
    u, b = [], []
    for c in cells:
        kappa_e = c["kappa_e"]
        s1 = np.where(kappa_e > 1e-12, (1.0 - (1.0 - kappa_e) ** c["n"]) / np.maximum(kappa_e, 1e-12),
                      float(c["n"]))
        s = c["mu_e"] * s1  # the model's mean change of each event per unit rho_i
        # one weight per cell, not per event: a weight that followed the event's state would follow the
        # earlier deviations that are in the same sums, and bias them
        w = float(np.nanmean(s)) ** 2 / max(float(np.nanmean(c["v"])), 1e-30)
        with np.errstate(invalid="ignore", divide="ignore"):
            u.append(c["d"] / s)
        b.append(np.full(s.shape, w))
    u, b = (np.concatenate(a, axis=0)[order] for a in (u, b))
    ok = np.isfinite(u) & np.isfinite(b)
    u, b = np.where(ok, u, 0.0), np.where(ok, b, 0.0)
    zero = np.zeros((1, n_dev))
    before = [np.concatenate([zero, np.cumsum(a, axis=0)[:-1]]) for a in (b * u, b)]
    # over the later events: sum b u, sum b, sum (b u)^2, sum b^2; the weighted mean over pairs of distinct
    # later events of u_1 u_2 is ((sum b u)^2 - sum (b u)^2) / ((sum b)^2 - sum b^2)
    after = [np.concatenate([np.cumsum(a[::-1], axis=0)[::-1][1:], zero]) for a in (b * u, b, (b * u) ** 2, b**2)]
    pairs = after[1] ** 2 - after[3]
    with np.errstate(invalid="ignore", divide="ignore"):
        rho_past = np.where(before[1] > 0, before[0] / before[1], rho)
        amplitude = np.where(pairs > 1e-9 * after[1] ** 2, (after[0] ** 2 - after[2]) / pairs, rho**2 - rho_var)
    own = np.clip(np.nan_to_num(rho_past, nan=1.0), 0.05, 5.0)
    row_of = np.empty(order.size, dtype=np.int64)
    row_of[order] = np.arange(order.size)  # time-ordered row of each cell event (cells concatenated)
    start = 0
    for c in cells:
        rows = row_of[start:start + c["j"]]
        start += c["j"]
        shape = (_c2c_path_factor(c["fit"], c["pol"], c["pre"], c["bounds"], own[rows], c["n"]) if with_model
                 else np.full(c["d"].shape, float(c["n"])))
        c["q"] = (shape * amplitude[rows]).mean(axis=0)


def _c2c_path_factor(fit: SoftBoundsFit, polarity: int, pre: np.ndarray, bounds_s, own: np.ndarray,
                     n: int) -> np.ndarray:
    """Cycle-to-cycle variance of an event of ``n`` pulses per unit ``(sigma_rel rho_i)^2``, (events, devices).

    Pulse k steps ``mu_k = mu(G_k)`` (the model along the event's mean path from the pre-event state
    ``pre``, the device stepping ``own`` x the model) with spread ``sigma_rel mu_k``; each later pulse j
    pulls a deviation back by ``1 - kappa_j`` (the soft bound's slope at ``G_j``), so the end state's
    variance is ``sigma_rel^2 sum_k mu_k^2 prod_{j>k} (1 - kappa_j)^2``.  With a linear bound (gamma = 1)
    that is ``n mu_0^2 (1-kappa)^(2(n-1))``; with gamma != 1 the step and the slope change along the
    path, and that constant-kappa form underestimates the variance at n = 16 by 0.7-1.4 % (gamma
    1.5-1.75, mid-window, against the exact recursion), which made sigma_rel ~0.4 % high: small next
    to the bootstrap error where the write error dominates, not where the cycle-to-cycle noise does
    (sigma_w 0.2 uS, sigma_c2c 1.4: a bootstrap error of ~0.35 %).  (Linearised about the mean path:
    the deviations' own effect on later steps, ~sigma_rel^2 kappa^2 n / 2, is ~0.3 % at n = 16 and
    sigma_rel 1.4.)
    """
    g = np.array(pre, dtype=float)
    mus, kappas = [], []
    for _ in range(n):
        kappa, mu = device_model(fit, polarity, g, bounds_s)
        mus.append(mu)
        kappas.append(np.clip(kappa * own, 0.0, 0.5))
        g = g + polarity * own * mu
    total, attenuation = np.zeros_like(g), np.ones_like(g)
    for mu, kappa in zip(reversed(mus), reversed(kappas)):
        total += mu**2 * attenuation
        attenuation *= (1.0 - kappa) ** 2
    return total


def _arrays(cells: list[dict], rho: dict, rho_var: dict, usable: np.ndarray, fit: MomentFit, bounds_s,
            with_model: bool) -> dict[str, tuple[np.ndarray, str]]:
    """The analysis's arrays for the raw file, with their units."""
    n_dev_all = usable.size
    step_unit = "1 (x population model)" if with_model else "S per pulse"
    nan_out = {pol: np.where(usable, rho[pol], np.nan) for pol in (+1, -1)}
    return {"step_scale_set": (nan_out[+1], step_unit), "step_scale_set_var": (rho_var[+1], step_unit + "^2"),
            "step_scale_reset": (nan_out[-1], step_unit), "step_scale_reset_var": (rho_var[-1], step_unit + "^2"),
            "used": (usable, "bool"),
            "own_window": (np.zeros(n_dev_all, bool) if bounds_s is None
                           else np.isfinite(bounds_s[0]) & np.isfinite(bounds_s[1]), "bool"),
            "cell_pulses": (np.array([c["n"] for c in cells]), "pulses"),
            "cell_polarity": (np.array([c["pol"] for c in cells]), "+1 SET / -1 RESET"),
            "cell_mean_change": (np.stack([c["m"] for c in cells]), "S"),
            "cell_mean_pre_g": (np.stack([c["pre_mean"] for c in cells]), "S"),
            "boot_sigma_w_s": (fit.boot[:, 0], "S"), "boot_relax_sigma0_s": (fit.boot[:, 1], "S"),
            "boot_c2c_rel": (fit.boot[:, 2], "1")}
