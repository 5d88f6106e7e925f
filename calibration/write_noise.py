"""Write noise: spread of the change achieved by write events of n pulses, for several n.

Design.  A sample of devices is programmed (write-verify) to the level where the
mean SET and RESET steps balance, given one discarded write event (so that no
measured event starts from a verify read that was *selected* for being within
tolerance), then for every ``n`` in ``pulse_counts`` ``cycles`` x (``n`` RESET
pulses, read, ``n`` SET pulses, read).  Every pulse batch is one write event.
What a change contains, the corrections and the moment fit are
:mod:`calibration.write_noise_analysis`'s (:func:`analyse_write_noise`).

The per-device step factors ``rho_i`` (mean change over many events, relative to
the model: a linear, unbiased statistic) are also returned: the calibration uses
their mean to fix the scale of the pulse-response model, and their spread for the
device-to-device CV.  They are relative to each device's own window where the
pulse-response stage fitted it, and are also given on the population window for every
sampled device (``step_scale_<pol>_pop``), so that the mean can use the whole sample.

Then the random walk of :mod:`calibration.write_walk` (``walk``, on by default): K single
partial-pulse events on the usable devices, read at checkpoints, whose accumulated spread gives
``sigma_w`` independently of the moment fit; the reported ``sigma_w`` combines the two
(inverse-variance weights), the moment fit's own estimate stays as ``moment_sigma_w_s``.

Reported: ``sigma_w`` (``write_noise_sigma_s``), ``sigma_r0`` (``relax_sigma0_s``),
``sigma_rel`` and, with the mean step at mid-window from the pulse response, the
absolute cycle-to-cycle spread ``sigma_c2c = sigma_rel * mu_mid``, so that one write
event of ``n`` pulses at mid-window changes the stored state with
``sigma(n)^2 = sigma_w^2 + n sigma_c2c^2``.  The classic pooled ``var(n)`` per
polarity (corrected, absolute) is kept for plots together with its own straight-line
fit.  Uncertainties: bootstrap over devices (the whole fit redone on each resample), widened
by the moment fit's Birge ratio where it is above 1 (``fit_birge_ratio`` in the result).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from calibration.common import (
    Measured,
    Progress,
    Raw,
    SampleInfo,
    choose_devices,
    pulse_devices,
    quantisation_var,
    read_repeated,
    split_flat,
    stage_rng,
)
from calibration.report import SoftBoundsFit
from calibration.write_noise_analysis import (
    CellStats,
    WriteNoiseResult,
    analyse_write_noise,
    change_slope,
    device_model,
)
from calibration.write_walk import (
    WalkParams,
    WalkResult,
    c2c_per_rel2,
    combine,
    edge_fraction,
    fit_walk,
    run_walk,
    walk_events,
    walk_widths,
)
from drivers.board import Board

__all__ = ["STAGE", "CellStats", "WriteNoiseParams", "WriteNoiseResult", "analyse_write_noise", "change_slope",
           "measure_write_noise"]

log = logging.getLogger(__name__)

STAGE = "write_noise"


class WriteNoiseParams(WalkParams):
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
    flat = _first_sample(board, params, rng, pool, extra_pool)
    limit = board.limits.max_pulses_per_device
    if max(params.pulse_counts) > limit:
        raise ValueError(f"write-noise pulse count {max(params.pulse_counts)} exceeds the board's "
                         f"max_pulses_per_device ({limit})")
    params = _with_reads_for(params, read_noise_rel, target_s)
    n_arr, pol_arr = event_schedule(params)

    def run(devices: np.ndarray) -> _Events:
        return _run_events(board, devices, n_arr, pol_arr, params, target_s, window_s, progress)

    def analyse(ev: _Events):
        return analyse_write_noise(ev.y, n_arr, pol_arr, params, read_noise_rel, quantisation_var(board),
                                   step_mid_s, rng, model, _own_bounds(ev.flat, device_bounds_s), ev.spread)

    events = run(flat)
    result, arrays = analyse(events)
    more = _extension(board, params, result, events.flat, pool, extra_pool, rng)
    if more is not None:
        events = events.joined(run(more))
        result, arrays = analyse(events)
    walk_arrays = _walk(board, params, result, arrays, events.flat, model, device_bounds_s, window_s, rng, progress)
    return _measured(result, arrays | walk_arrays, events, params, n_arr, pol_arr, target_s)


def _walk(board: Board, params: WriteNoiseParams, result: WriteNoiseResult, arrays: dict, flat: np.ndarray,
          model: dict[str, SoftBoundsFit] | None, device_bounds_s, window_s: float, rng: np.random.Generator,
          progress: Progress) -> dict:
    """The random walk (:mod:`calibration.write_walk`) on the usable devices, its sigma_w combined into ``result``
    (``arrays``' ``boot_sigma_w_s`` replaced by the combined replicates); returns its raw arrays."""
    boot_moment = np.asarray(arrays["boot_sigma_w_s"][0])
    result.moment_sigma_w_s, result.moment_sigma_w_sigma_s = result.write_noise_sigma_s, result.write_noise_sigma_sigma_s
    empty = {"walk_devices": (np.zeros(0, np.int64), "flat index (row*cols+col)"),
             "walk_g": (np.zeros((0, 0)), "S"), "walk_width_sec": (np.zeros(0), "s (SET, RESET)"),
             "boot_sigma_w_moment_s": (boot_moment, "S"), "boot_sigma_w_walk_s": (np.zeros(0), "S")}
    used = np.asarray(arrays["used"][0], bool)
    if not params.walk or used.sum() < 8:
        return empty
    devices = np.asarray(flat)[used]
    widths, ratios = walk_widths(board, params.walk_width_ratio)
    m = params.walk_checkpoint_events
    n_events = walk_events(params, max(result.write_noise_sigma_s, result.write_noise_sigma_sigma_s), window_s)
    y = run_walk(board, devices, n_events, m, widths, params.n_reads, progress)
    if y is None:
        return empty
    rho2, mu = {}, {}
    bounds = _own_bounds(devices, device_bounds_s)
    for pol, name in ((+1, "set"), (-1, "reset")):
        rho, var = (np.asarray(arrays[f"step_scale_{name}{x}"][0])[used] for x in ("", "_var"))
        rho2[pol] = np.maximum(rho**2 - var, 0.0)
        mu[pol] = device_model(model[name], pol, y[0], bounds)[1] if model is not None else np.ones(devices.size)
    fit = fit_walk(y, m, c2c_per_rel2(ratios, rho2, mu), result.c2c_sigma_rel, arrays["boot_c2c_rel"][0], rng,
                   params.n_boot)
    value, boot, weight = combine(result.write_noise_sigma_s, boot_moment, fit["sigma_w_s"], fit["boot"])
    lo, hi = (model["set"].g_min_s, model["set"].g_max_s) if model is not None else (np.nan, np.nan)
    result.walk = WalkResult(
        sigma_w_s=fit["sigma_w_s"], sigma_w_sigma_s=float(np.std(fit["boot"], ddof=1)),
        event_var_s2=fit["event_var_s2"], c2c_var_s2=fit["c2c_var_s2"], checkpoint_var_s2=fit["checkpoint_var_s2"],
        events=n_events, checkpoint_events=m, reads_per_checkpoint=params.n_reads, width_sec=widths,
        width_ratio=ratios, lags=fit["lags"].tolist(), lag_mean_sq_s2=fit["rows"].mean(axis=1).tolist(),
        n_devices=int(devices.size), edge_fraction=edge_fraction(y[-1], lo, hi), moment_weight=weight)
    result.write_noise_sigma_s, result.write_noise_sigma_sigma_s = value, float(np.std(boot, ddof=1))
    arrays["boot_sigma_w_s"] = (boot, "S")
    log.info("write noise: random walk of %d events on %d devices: sigma_w %.3g S (moment fit %.3g S, weight %.2f)",
             n_events, devices.size, fit["sigma_w_s"], result.moment_sigma_w_s, weight)
    return empty | {"walk_devices": (devices, "flat index (row*cols+col)"), "walk_g": (y, "S"),
                    "walk_width_sec": (np.array([widths["set"], widths["reset"]]), "s (SET, RESET)"),
                    "boot_sigma_w_walk_s": (fit["boot"], "S")}


def _first_sample(board: Board, params: WriteNoiseParams, rng: np.random.Generator, pool: np.ndarray | None,
                  extra_pool: np.ndarray | None) -> np.ndarray:
    """The first sample: from ``pool``, topped up from ``extra_pool`` when the pool is too small."""
    if pool is not None and extra_pool is not None and np.asarray(pool).size < params.n_devices:
        # every device of the primary pool (their windows are known), the rest from the others
        others = np.setdiff1d(np.asarray(extra_pool, dtype=np.int64), pool)
        rest = choose_devices(board, params.n_devices - np.asarray(pool).size, rng, others,
                              what="the write-noise sample")
        return np.sort(np.concatenate([np.asarray(pool, dtype=np.int64), rest]))
    return choose_devices(board, params.n_devices, rng, pool, what="the write-noise sample")


def _with_reads_for(params: WriteNoiseParams, read_noise_rel: float, target_s: float) -> WriteNoiseParams:
    """Reads per event from the measured read noise: a noisy read-out would otherwise swamp a small write error."""
    reads = int(np.ceil((read_noise_rel * target_s) ** 2 / params.read_var_target_s2))
    if reads > params.n_reads and params.max_reads > params.n_reads:
        params = params.model_copy(update={"n_reads": min(reads, params.max_reads)})
        log.info("write noise: %d reads after each event (relative read noise %.3g)", params.n_reads, read_noise_rel)
    return params


def event_schedule(params: WriteNoiseParams) -> tuple[np.ndarray, np.ndarray]:
    """Pulses and polarity of every write event: a discarded first event, then RESET/SET pairs per count."""
    events_n, events_pol = [params.pulse_counts[0]], [+1]  # event 0: the discarded one
    for n in params.pulse_counts:
        for _ in range(params.cycles):
            events_n += [n, n]
            events_pol += [-1, +1]
    return np.array(events_n), np.array(events_pol)


def _extension(board: Board, params: WriteNoiseParams, result: WriteNoiseResult, flat: np.ndarray,
               pool: np.ndarray | None, extra_pool: np.ndarray | None, rng: np.random.Generator) -> np.ndarray | None:
    """Fresh devices to add when the first sample's relative errors are above their targets (None: no more).

    The precision of sigma_w (sigma_rel) falls with the ratio of the cycle-to-cycle (write) noise to
    it, so a device whose write error is small next to its cycle-to-cycle spread needs a larger
    sample for the same relative error.
    """
    need = max((result.write_noise_sigma_sigma_s / max(result.write_noise_sigma_s, 1e-30)
                / params.target_rel_sigma_w) ** 2,
               (result.c2c_sigma_rel_sigma / max(result.c2c_sigma_rel, 1e-30) / params.target_rel_c2c) ** 2)
    n_more = int(min(np.ceil(flat.size * (min(need, params.max_extend_factor) - 1.0) * 1.1),
                     params.max_devices - flat.size))
    if not (need > 1.0 and n_more > 0):
        return None
    everyone = np.concatenate([np.asarray(a, dtype=np.int64) for a in (pool, extra_pool) if a is not None]) \
        if pool is not None else np.arange(board.info.rows * board.info.cols, dtype=np.int64)
    fresh = np.setdiff1d(np.unique(everyone), flat)
    n_more = min(n_more, fresh.size)
    if n_more < 8:
        return None
    first = np.setdiff1d(np.asarray(pool), flat) if pool is not None else fresh
    # fresh devices from the primary pool first (their windows are known), then the others
    if first.size >= n_more:
        more = choose_devices(board, n_more, rng, first, what="the write-noise extension")
    else:
        rest = np.setdiff1d(fresh, first)
        more = np.sort(np.concatenate([first, rng.choice(rest, size=n_more - first.size, replace=False)]))
    log.info("write noise: relative errors call for %.1fx the devices; adding %d", need, more.size)
    return more


def _measured(result: WriteNoiseResult, arrays: dict, ev: _Events, params: WriteNoiseParams, n_arr: np.ndarray,
              pol_arr: np.ndarray, target_s: float) -> Measured:
    """The stage's result completed with the run's figures, and its raw arrays."""
    result.target_s = float(target_s)
    result.programmed_fraction = float(np.mean(ev.converged))
    result.reads_per_event = params.n_reads
    result.devices_added = int(ev.flat.size - params.n_devices)
    pulses = np.full(ev.flat.size, int(n_arr.sum()))
    walk = ""
    if result.walk is not None:  # its partial pulses (the discarded event's too) on the usable devices
        pulses[np.asarray(arrays["used"][0], bool)] += result.walk.events + 1
        walk = f"; then {result.walk.events + 1} partial-pulse walk events on the {result.walk.n_devices} usable ones"
    result.sample = SampleInfo.from_counts(
        pulses, "uniform random over responsive devices (pulse-response sample "
        f"when possible, extended when the noise asks for it); write-verify to the start level used {ev.pulses} "
        f"more pulses in all{walk}", n_arr.size)
    raw = Raw()
    raw.add("devices", ev.flat, "flat index (row*cols+col)")
    raw.add("g", ev.y, "S")
    raw.add("read_spread", ev.spread, "S^2")
    raw.add("event_pulses", n_arr, "pulses")
    raw.add("event_polarity", pol_arr, "+1 SET / -1 RESET")
    raw.add("program_achieved", ev.achieved_s, "S")
    raw.add("program_converged", ev.converged, "bool")
    raw.add("program_pulses_total", np.int64(ev.pulses), "pulses")
    for name, (arr, unit) in arrays.items():
        raw.add(name, arr, unit)
    return Measured(result, raw)


@dataclass(frozen=True)
class _Events:
    """The reads around the write events of a set of devices, and their programming to the start level."""

    flat: np.ndarray
    y: np.ndarray  # mean of the reads after every event (events+1, devices)
    spread: np.ndarray  # sample variance of those reads
    achieved_s: np.ndarray
    converged: np.ndarray
    pulses: int  # write-verify pulses

    def joined(self, other: _Events) -> _Events:
        return _Events(np.concatenate([self.flat, other.flat]), np.concatenate([self.y, other.y], axis=1),
                       np.concatenate([self.spread, other.spread], axis=1),
                       np.concatenate([self.achieved_s, other.achieved_s]),
                       np.concatenate([self.converged, other.converged]), self.pulses + other.pulses)


def _run_events(board: Board, flat: np.ndarray, n_arr: np.ndarray, pol_arr: np.ndarray, params: WriteNoiseParams,
                target_s: float, window_s: float, progress: Progress) -> _Events:
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
    return _Events(np.asarray(flat), y, spread, np.asarray(prog.achieved_s), np.asarray(prog.converged, bool),
                   int(prog.pulses))


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


