"""Write noise: spread of the change achieved by write events of n pulses, for several n.

Design.  A sample of devices is programmed (write-verify) to the level where the
mean SET and RESET steps balance, given one discarded write event (so that no
measured event starts from a verify read that was *selected* for being within
tolerance), then for every ``n`` in ``pulse_counts`` ``cycles`` x (``n`` RESET
pulses, read, ``n`` SET pulses, read).  Every pulse batch is one write event.

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
* regresses the corrected variances on ``Q = n mu_0^2 (1-kappa)^(2(n-1))``, the
  cycle-to-cycle variance per unit ``sigma_rel^2`` of an event of n pulses that
  starts where one pulse steps ``mu_0``: the soft bound pulls back part of each
  earlier pulse's deviation within the event (~``(n-1) kappa`` of the variance at
  n pulses).  ``mu_0`` is the device's own step at its pre-event state: the
  population model scaled by a per-device factor estimated from all the device's
  events of that polarity (inverse-variance weighted, so the large-n events pin it
  down; the bias of its square is removed).  Pooled over devices per
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
  normalised by the model just inside it (never by a zero step).

The per-device step factors ``rho_i`` (mean change over many events, relative to
the model: a linear, unbiased statistic) are also returned: the calibration uses
their mean to fix the scale of the pulse-response model, and their spread for the
device-to-device CV.

Reported: ``sigma_w`` (``write_noise_sigma_s``), ``sigma_r0`` (``relax_sigma0_s``),
``sigma_rel`` and, with the mean step at mid-window from the pulse response, the
absolute cycle-to-cycle spread ``sigma_c2c = sigma_rel * mu_mid``, so that one write
event of ``n`` pulses at mid-window changes the stored state with
``sigma(n)^2 = sigma_w^2 + n sigma_c2c^2``.  The classic pooled ``var(n)`` per
polarity (corrected, absolute) is kept for plots together with its own straight-line
fit.  Uncertainties: bootstrap over devices (the whole fit redone on each resample).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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
    read_repeated,
    split_flat,
    stage_rng,
)
from calibration.fits import weighted_line
from calibration.report import SoftBoundsFit
from drivers.board import Board

log = logging.getLogger(__name__)

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
    read_var_target_s2: float = Field(0.25e-12, gt=0, description="more reads after each event (up to max_reads) "
                                      "until one averaged read's noise variance at the start level is at most this")
    max_reads: int = Field(8, ge=1)
    target_rel_sigma_w: float = Field(0.035, gt=0, description="relative standard error of sigma_w above which "
                                      "fresh devices are added")
    target_rel_c2c: float = Field(0.05, gt=0, description="same for the relative cycle-to-cycle spread")
    max_extend_factor: float = Field(6.0, ge=1.0, description="at most this many times the first sample in all")
    max_devices: int = Field(12288, ge=16, description="at most this many devices in all")


class CellStats(BaseModel):
    """Pooled figures of the events with one pulse count and polarity."""

    n: int
    polarity: str
    var_raw_s2: float = Field(description="mean within-device variance of the change")
    var_read_s2: float = Field(description="read-noise part, subtracted")
    var_wander_s2: float = Field(description="removed by taking residuals given the pre-event state")
    var_s2: float = Field(description="corrected variance of the change between two reads: "
                                      "sigma_w^2 + 2 sigma_r0^2 + c2c")
    q_s2: float = Field(description="mean over devices of n mu_0^2 (1-kappa)^(2(n-1)) (c2c variance / sigma_rel^2)")
    mean_change_s: float
    beta: float = Field(description="dE[change]/dG from the pulse-response model at the cell's mean state")


class WriteNoiseResult(BaseModel):
    write_noise_sigma_s: float = Field(description="persistent write error of one event, sigma_w")
    write_noise_sigma_sigma_s: float
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
    reads_per_event: int = Field(0, description="reads averaged after each event (chosen from the read noise)")
    devices_added: int = Field(0, description="devices added to the first sample because the noise asked for it")
    target_s: float
    programmed_fraction: float
    read_noise_rel_used: float
    sample: SampleInfo


def measure_write_noise(board: Board, params: WriteNoiseParams | None = None, *,
                        target_s: float, window_s: float, pool: np.ndarray | None = None,
                        extra_pool: np.ndarray | None = None,
                        read_noise_rel: float, step_mid_s: float | None = None,
                        model: dict[str, SoftBoundsFit] | None = None,
                        device_bounds_s: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                        progress: Progress = None) -> Measured:
    """Measure the change of write events of ``n`` pulses for every n of ``params.pulse_counts``.

    ``target_s``: level to program the devices to first (where SET and RESET balance);
    ``window_s``: g_max - g_min (for the programming tolerance); ``read_noise_rel``:
    measured relative read noise (subtracted); ``step_mid_s``: mean SET step at
    mid-window (to express the cycle-to-cycle spread in siemens); ``model``: the
    pulse-response fits by polarity (for the state-wandering correction; none without);
    ``device_bounds_s``: (flat indices, lower bounds, upper bounds) fitted per device by the
    pulse-response stage -- sampled devices among them are normalised by their own window.

    When the first sample's bootstrap relative error of ``sigma_w`` or ``sigma_rel`` is above its
    target (``target_rel_sigma_w``, ``target_rel_c2c``), fresh devices (``pool`` first, then
    ``extra_pool``) get the same events, up to ``max_extend_factor`` x the sample and ``max_devices``,
    and the whole sample is analysed again.
    """
    params = params or WriteNoiseParams()
    rng = stage_rng(params.seed, STAGE)
    if pool is not None and extra_pool is not None and np.asarray(pool).size < params.n_devices:
        # every device of the primary pool (their windows are known), the rest from the others
        others = np.setdiff1d(np.asarray(extra_pool, dtype=np.int64), pool)
        rest = choose_devices(board, params.n_devices - np.asarray(pool).size, rng, others,
                              what="the write-noise sample")
        flat = np.sort(np.concatenate([np.asarray(pool, dtype=np.int64), rest]))
    else:
        flat = choose_devices(board, params.n_devices, rng, pool, what="the write-noise sample")
    limit = board.limits.max_pulses_per_device
    if max(params.pulse_counts) > limit:
        raise ValueError(f"write-noise pulse count {max(params.pulse_counts)} exceeds the board's "
                         f"max_pulses_per_device ({limit})")
    # reads from the measured read noise: a noisy read-out would otherwise swamp a small write error
    reads = int(np.ceil((read_noise_rel * target_s) ** 2 / params.read_var_target_s2))
    if reads > params.n_reads and params.max_reads > params.n_reads:
        params = params.model_copy(update={"n_reads": min(reads, params.max_reads)})
        log.info("write noise: %d reads after each event (relative read noise %.3g)", params.n_reads, read_noise_rel)
    events_n, events_pol = [params.pulse_counts[0]], [+1]  # event 0: the discarded one
    for n in params.pulse_counts:
        for _ in range(params.cycles):
            events_n += [n, n]
            events_pol += [-1, +1]
    n_arr, pol_arr = np.array(events_n), np.array(events_pol)
    y, spread, prog = _run_events(board, flat, n_arr, pol_arr, params, target_s, window_s, progress)
    result, arrays = analyse_write_noise(y, n_arr, pol_arr, params, read_noise_rel, quantisation_var(board),
                                         step_mid_s, rng, model, _own_bounds(flat, device_bounds_s), spread)
    # More devices where the noise asks for them: the precision of sigma_w (sigma_rel) falls with the
    # ratio of the cycle-to-cycle (write) noise to it, so a device whose write error is small next to its
    # cycle-to-cycle spread needs a larger sample for the same relative error.
    need = max((result.write_noise_sigma_sigma_s / max(result.write_noise_sigma_s, 1e-30)
                / params.target_rel_sigma_w) ** 2,
               (result.c2c_sigma_rel_sigma / max(result.c2c_sigma_rel, 1e-30) / params.target_rel_c2c) ** 2)
    n_more = int(min(np.ceil(flat.size * (min(need, params.max_extend_factor) - 1.0) * 1.1),
                     params.max_devices - flat.size))
    if need > 1.0 and n_more > 0:
        everyone = np.concatenate([np.asarray(a, dtype=np.int64) for a in (pool, extra_pool) if a is not None]) \
            if pool is not None else np.arange(board.info.rows * board.info.cols, dtype=np.int64)
        fresh = np.setdiff1d(np.unique(everyone), flat)
        n_more = min(n_more, fresh.size)
        if n_more >= 8:
            first = np.setdiff1d(np.asarray(pool), flat) if pool is not None else fresh
            # fresh devices from the primary pool first (their windows are known), then the others
            if first.size >= n_more:
                more = choose_devices(board, n_more, rng, first, what="the write-noise extension")
            else:
                rest = np.setdiff1d(fresh, first)
                more = np.sort(np.concatenate([first, rng.choice(rest, size=n_more - first.size, replace=False)]))
            log.info("write noise: relative errors call for %.1fx the devices; adding %d", need, more.size)
            y2, spread2, prog2 = _run_events(board, more, n_arr, pol_arr, params, target_s, window_s, progress)
            flat, y = np.concatenate([flat, more]), np.concatenate([y, y2], axis=1)
            spread = np.concatenate([spread, spread2], axis=1)
            prog = _Programmed(np.concatenate([prog.achieved_s, prog2.achieved_s]),
                               np.concatenate([prog.converged, prog2.converged]), prog.pulses + prog2.pulses)
            result, arrays = analyse_write_noise(y, n_arr, pol_arr, params, read_noise_rel, quantisation_var(board),
                                                 step_mid_s, rng, model, _own_bounds(flat, device_bounds_s), spread)
    result.target_s = float(target_s)
    result.programmed_fraction = float(np.mean(prog.converged))
    result.reads_per_event = params.n_reads
    result.devices_added = int(flat.size - params.n_devices)
    result.sample = SampleInfo.from_counts(
        np.full(flat.size, int(n_arr.sum())), "uniform random over responsive devices (pulse-response sample "
        f"when possible, extended when the noise asks for it); write-verify to the start level used {prog.pulses} "
        "more pulses in all", len(events_n))
    raw = Raw()
    raw.add("devices", flat, "flat index (row*cols+col)")
    raw.add("g", y, "S")
    raw.add("read_spread", spread, "S^2")
    raw.add("event_pulses", n_arr, "pulses")
    raw.add("event_polarity", pol_arr, "+1 SET / -1 RESET")
    raw.add("program_achieved", prog.achieved_s, "S")
    raw.add("program_converged", prog.converged, "bool")
    raw.add("program_pulses_total", np.int64(prog.pulses), "pulses")
    for name, (arr, unit) in arrays.items():
        raw.add(name, arr, unit)
    return Measured(result, raw)


@dataclass(frozen=True)
class _Programmed:
    achieved_s: np.ndarray
    converged: np.ndarray
    pulses: int


def _run_events(board: Board, flat: np.ndarray, n_arr: np.ndarray, pol_arr: np.ndarray, params: WriteNoiseParams,
                target_s: float, window_s: float, progress: Progress) -> tuple[np.ndarray, np.ndarray, _Programmed]:
    """Program ``flat`` to ``target_s``, then the write events: mean and sample variance of the reads after
    every event (events+1, devices), and the programming."""
    rows, cols = split_flat(board, flat)
    prog = board.program(rows, cols, np.full(flat.size, target_s), params.program_tolerance_rel * window_s,
                         params.program_max_iter)
    if progress:
        progress(1.0)
    y = np.empty((n_arr.size + 1, flat.size))
    spread = np.full_like(y, np.nan)

    def read(t: int) -> None:
        reads = read_repeated(board, flat, params.n_reads)
        y[t] = reads.mean(axis=0)
        if params.n_reads >= 2:
            spread[t] = reads.var(axis=0, ddof=1)

    read(0)
    for t, (n, pol) in enumerate(zip(n_arr.tolist(), pol_arr.tolist())):
        pulse_devices(board, flat, pol * n)
        read(t + 1)
        if progress and t % 2 == 0:
            progress(1.0)
    return y, spread, _Programmed(np.asarray(prog.achieved_s), np.asarray(prog.converged, bool), int(prog.pulses))


def _own_bounds(flat: np.ndarray, device_bounds_s) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-device (lower, upper) bounds of the sampled devices the pulse-response stage fitted (NaN elsewhere)."""
    if device_bounds_s is None:
        return None
    known, lo_k, hi_k = (np.asarray(a) for a in device_bounds_s)
    if known.size == 0:
        return None
    pos = np.searchsorted(known, flat).clip(0, known.size - 1)
    hit = known[pos] == flat
    return np.where(hit, lo_k[pos], np.nan), np.where(hit, hi_k[pos], np.nan)


def _cell_arrays(y: np.ndarray, n_arr: np.ndarray, pol_arr: np.ndarray, n: int, pol: int):
    """Event indices, changes in the pulsed direction (J, N) and pre-event reads of one (n, polarity)."""
    t = np.flatnonzero((n_arr == n) & (pol_arr == pol))
    t = t[t >= 1]  # event 0 is discarded
    return t, pol * (y[t + 1] - y[t]), y[t]


def _device_model(fit: SoftBoundsFit, polarity: int, g_s: np.ndarray,
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


def _lag1_coef(cell_of: dict, t: int) -> np.ndarray:
    """``a_t``: the covariance of the residuals of events t and t+1 is ``a_t (sigma_r0^2 + read var of y[t+1])``.

    The read after event t carries its relaxation offset (and read noise) with weight ``pol_t`` in
    event t's change and ``-(pol_{t+1} + beta_{t+1})`` in event t+1's residual.
    """
    c0, j0 = cell_of[t]
    c1, j1 = cell_of[t + 1]
    return -c0["pol"] * (c1["pol"] + c1["beta"])


def _nonneg_wls(design: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least squares with every coefficient >= 0 (active set: drop negative ones, refit)."""
    free = np.ones(design.shape[1], bool)
    coef = np.zeros(design.shape[1])
    sw = np.sqrt(w)
    for _ in range(design.shape[1]):
        sol, *_ = np.linalg.lstsq(design[:, free] * sw[:, None], y * sw, rcond=None)
        coef[:] = 0.0
        coef[free] = sol
        if np.all(coef[free] >= 0):
            break
        free &= coef > 0
        if not free.any():
            break
    return np.maximum(coef, 0.0)


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
    """
    r = params.n_reads
    s_rd2 = read_noise_rel**2
    per_read_var = s_rd2 * y**2 + q_var  # variance of one read, (events+1, devices)
    if read_spread_s2 is not None and r >= 2:
        # each device's own read noise from the spread of the reads after every event (the relaxation offset
        # is common to them): relative, so that it follows the device's state; this stage's own measurement,
        # so that the bootstrap over devices carries its error
        with np.errstate(invalid="ignore", divide="ignore"):
            rel2 = np.nanmean(read_spread_s2, axis=0) / np.nanmean(y**2, axis=0)
        per_read_var = np.where(np.isfinite(rel2), rel2, s_rd2 + q_var / np.maximum(np.nanmean(y**2), 1e-30)) * y**2
    n_dev_all = y.shape[1]
    cells = []
    for n in params.pulse_counts:
        for pol in (+1, -1):
            t, d, pre = _cell_arrays(y, n_arr, pol_arr, n, pol)
            pre_mean = pre.mean(axis=0)
            if model is not None:
                fit_p = model["set" if pol > 0 else "reset"]
                kappa0, mu_model = _device_model(fit_p, pol, pre_mean, bounds_s)
                # the model at every event's own pre-event state too: a device's state wanders by several
                # uS between events (its persistent write errors random-walk), and the step is convex in the
                # state (gamma > 1), so the mean step (and square step) over the events is not the step at
                # the mean state -- ~5 % at gamma 1.75 and sigma_w ~ 3 uS
                kappa0_e, mu_e = _device_model(fit_p, pol, pre, bounds_s)
            else:
                kappa0, mu_model = np.zeros(d.shape[1]), np.ones(d.shape[1])
                kappa0_e, mu_e = np.zeros(d.shape), np.ones(d.shape)
            cells.append(dict(n=n, pol=pol, j=d.shape[0], t=t, d=d, pre=pre, pre_mean=pre_mean, kappa0=kappa0,
                              mu_model=mu_model, kappa0_e=kappa0_e, mu_e=mu_e, m=d.mean(axis=0),
                              raw=d.var(axis=0, ddof=1)))

    # Every device's step relative to the population model (rho_i), per polarity, from all its cells:
    # the mean change of n pulses is rho_i * mu_model * S1(kappa_i, n), S1 = (1 - (1-kappa)^n) / kappa,
    # and the decrement kappa_i = rho_i * kappa_model is the device's own (it scales with its step), so
    # iterate.  Inverse-variance weights: the large-n cells pin rho_i down.
    rho = {+1: np.ones(n_dev_all), -1: np.ones(n_dev_all)}
    rho_var = {+1: np.zeros(n_dev_all), -1: np.zeros(n_dev_all)}
    for _ in range(3):
        for c in cells:
            own = np.clip(np.nan_to_num(rho[c["pol"]], nan=1.0), 0.05, 5.0)
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
        if model is None:
            break
    beta_of = {}
    for c in cells:
        n, pol, d, pre, t = c["n"], c["pol"], c["d"], c["pre"], c["t"]
        kappa = c["kappa"]
        beta = change_slope(kappa, pol, n) if params.wandering_correction else np.zeros(d.shape[1])
        # residual of each change given its pre-event state: removes the state dependence of the
        # mean change and, with it, the negative correlation between a device's successive events
        res = d - beta * (pre - c["pre_mean"])
        coef = (pol + beta) ** 2  # weight of the pre-event read's offset and read noise in ``res``
        rv_after = per_read_var[t + 1].mean(axis=0) / r
        rv_before = per_read_var[t].mean(axis=0) / r
        # cycle-to-cycle variance per unit sigma_rel^2: n mu_0^2 (1-kappa)^(2(n-1)), mu_0 = rho_i mu_model
        c.update(res=res, v=res.var(axis=0, ddof=1), rv=rv_after + coef * rv_before, k=1.0 + coef, beta=beta,
                 q=n * ((1.0 - c["kappa_e"]) ** (2 * (n - 1)) * c["mu_e"] ** 2).mean(axis=0)
                 * (rho[pol] ** 2 - rho_var[pol]))
        for j, tt in enumerate(t.tolist()):
            beta_of[tt] = (c, j)

    # Rows of the moment fit, each a per-device statistic and its per-device design (sigma_w^2, sigma_r0^2,
    # sigma_rel^2): the residual variance of every cell, and the lag-1 covariance of successive events
    # (from differences of same-cell events two apart, which cancel each device's cell means).
    rows_y, rows_x, row_kind = [], [], []
    for c in cells:
        rows_y.append(c["v"] - c["rv"])
        rows_x.append(np.stack([np.ones_like(c["k"]), c["k"], c["q"]]))
        row_kind.append(("var", c["n"], c["pol"]))
    read_var = per_read_var / r  # variance of every averaged read, (events+1, devices)
    for n in params.pulse_counts:
        # only where the state correction is small: an error in beta would leak c2c and write noise in
        block = [t for t in range(1, len(n_arr)) if n_arr[t] == n and t in beta_of]
        if len(block) < 4 or max(float(np.mean(np.abs(beta_of[t][0]["beta"]))) for t in block) > 0.15:
            continue
        for parity in (0, 1):
            prods, xs = [], []
            for k in range(parity, len(block) - 3, 2):
                t0, t1, t2, t3 = block[k:k + 4]
                if t3 - t0 != 3:
                    continue
                r0, r1, r2, r3 = (beta_of[t][0]["res"][beta_of[t][1]] for t in (t0, t1, t2, t3))
                a01, a12, a23 = (_lag1_coef(beta_of, t) for t in (t0, t1, t2))
                prods.append((r2 - r0) * (r3 - r1) - (a01 * read_var[t1] + a23 * read_var[t3] - a12 * read_var[t2]))
                xs.append(a01 + a23 - a12)
            if prods:
                zeros = np.zeros(n_dev_all)
                rows_y.append(np.mean(prods, axis=0))
                rows_x.append(np.stack([zeros, np.mean(xs, axis=0), zeros]))
                row_kind.append(("lag1", n, int(pol_arr[block[parity]])))
    ry = np.stack(rows_y)  # (rows, devices)
    rx = np.stack(rows_x)  # (rows, 3, devices)
    usable = np.all(np.isfinite(ry), axis=0) & np.all(np.isfinite(rx), axis=(0, 1))
    for pol in (+1, -1):
        usable &= np.isfinite(rho[pol]) & (rho[pol] > 0)
    n_used = int(usable.sum())
    if n_used < 8:
        raise ValueError(f"write noise: only {n_used} of {n_dev_all} sampled devices gave a usable response "
                         "to the write events (no step or no read-out); the devices do not respond to the "
                         "pulse profiles, or nearly all are stuck")
    ry, rx = ry[:, usable], rx[:, :, usable]
    row_var = np.maximum(ry.var(axis=1, ddof=1) / n_used, 1e-300)  # variance of each row's mean
    weights = 1.0 / row_var

    def fit(counts: np.ndarray | None) -> np.ndarray:
        """(sigma_w^2, sigma_r0^2, sigma_rel^2) from the device means (bootstrap: weighted by ``counts``)."""
        if counts is None:
            yy, xx = ry.mean(axis=1), rx.mean(axis=2)
        else:
            yy, xx = ry @ counts / n_used, rx @ counts / n_used
        return _nonneg_wls(xx, yy, weights)

    sw2, sr2, c_slope = fit(None)
    s, s_r0, sig_rel = (float(np.sqrt(v)) for v in (sw2, sr2, c_slope))
    boot = bootstrap_indices(rng, n_used, params.n_boot)
    counts = np.stack([np.bincount(b, minlength=n_used) for b in boot]).astype(float)
    reps = np.sqrt(np.array([fit(cnt) for cnt in counts]))
    bs, br0, br = reps[:, 0], reps[:, 1], reps[:, 2]
    s_sig, r0_sig, r_sig = (float(np.std(v, ddof=1)) for v in (bs, br0, br))

    stats = []
    for i, c in enumerate(cells):
        vm = float(ry[i].mean())
        km, qm = float(rx[i, 1].mean()), float(rx[i, 2].mean())
        stats.append(CellStats(n=c["n"], polarity="set" if c["pol"] > 0 else "reset",
                               var_raw_s2=float(c["raw"][usable].mean()), var_read_s2=float(c["rv"][usable].mean()),
                               var_wander_s2=float(c["raw"][usable].mean() - c["v"][usable].mean()),
                               var_s2=vm + (2.0 - km) * sr2, q_s2=qm, mean_change_s=float(c["m"][usable].mean()),
                               beta=float(c["beta"][usable].mean())))
    lag1 = [{"n": kind[1], "first_polarity": "set" if kind[2] > 0 else "reset", "value_s2": float(ry[i].mean()),
             "coef": float(rx[i, 1].mean())} for i, kind in enumerate(row_kind) if kind[0] == "lag1"]
    by_pol = {}
    for pol in ("set", "reset"):
        ns = np.array([c.n for c in stats if c.polarity == pol], float)
        vv = np.array([c.var_s2 for c in stats if c.polarity == pol])
        a, b, _ = weighted_line(ns, vv, 1.0 / np.maximum(vv, 1e-30) ** 2)
        by_pol[pol] = {"offset_var_s2": a, "slope_s2": b, "sigma_abs_s": float(np.sqrt(max(b, 0.0)))}
    result = WriteNoiseResult(
        write_noise_sigma_s=s, write_noise_sigma_sigma_s=s_sig, relax_sigma0_s=s_r0, relax_sigma0_sigma_s=r0_sig,
        c2c_sigma_rel=sig_rel, c2c_sigma_rel_sigma=r_sig,
        c2c_sigma_s=None if step_mid_s is None else sig_rel * step_mid_s,
        c2c_sigma_sigma_s=None if step_mid_s is None else r_sig * step_mid_s,
        by_polarity=by_pol, cells=stats, lag1=lag1, n_used=n_used, target_s=0.0, programmed_fraction=0.0,
        read_noise_rel_used=float(read_noise_rel), sample=SampleInfo(n_devices=n_dev_all, selection=""),
    )
    step_unit = "1 (x population model)" if model is not None else "S per pulse"
    nan_out = {pol: np.where(usable, rho[pol], np.nan) for pol in (+1, -1)}
    arrays = {"step_scale_set": (nan_out[+1], step_unit), "step_scale_set_var": (rho_var[+1], step_unit + "^2"),
              "step_scale_reset": (nan_out[-1], step_unit), "step_scale_reset_var": (rho_var[-1], step_unit + "^2"),
              "used": (usable, "bool"),
              "own_window": (np.zeros(n_dev_all, bool) if bounds_s is None
                             else np.isfinite(bounds_s[0]) & np.isfinite(bounds_s[1]), "bool"),
              "cell_pulses": (np.array([c["n"] for c in cells]), "pulses"),
              "cell_polarity": (np.array([c["pol"] for c in cells]), "+1 SET / -1 RESET"),
              "cell_mean_change": (np.stack([c["m"] for c in cells]), "S"),
              "cell_mean_pre_g": (np.stack([c["pre_mean"] for c in cells]), "S"),
              "boot_sigma_w_s": (bs, "S"), "boot_relax_sigma0_s": (br0, "S"), "boot_c2c_rel": (br, "1")}
    return result, arrays
