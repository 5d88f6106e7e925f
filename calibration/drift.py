"""Drift / relaxation: programmed levels read at log-spaced times on the board clock.

A sample of responsive devices is split over several target levels (fractions of
the window), programmed with the board's write-verify (``board.program``) and read
``n_reads`` times right after (t ~ 0) and at log-spaced times up to ``t_max_sec``
(``board.wait`` between; the emulator's clock is virtual, so hours take no wall
time -- on a real board they take hours).

Verify selects.  Write-verify stops at the first write event whose read lands
within tolerance, so the accepted event's offset tends to compensate the
remaining error -- and where relaxation's later spread shares its random factor
with the offset at t ~ 0 (as in the model below), the subsequent drift is biased
by the selection, differently at each level.  The training loop writes with plain
pulses, which select nothing, so by default every device gets one more,
unverified write event of ``release_pulses`` pulse (alternating polarity) after
programming, and the clock starts then.

Model (the emulator's and IBM aihwkit's): after a write, a read sees a mean shift
``-mu ln(1 + t/t0)`` and a spread ``(sigma0 + sigma1 ln(1 + t/t0)) xi`` with one
``xi`` per write event.  The change of a device from its read at t ~ 0 is then
``(-mu + sigma1 xi_i) (L(t) - L(0))``, ``L = ln(1 + t/t0)``: each device drifts along
a straight line in ``L`` whose slope is ``-mu + sigma1 xi_i``.  So per device the
least-squares slope ``b_i`` of all its reads against ``L`` is computed; ``mu = -mean(b_i)`` (its
uncertainty the standard error over devices) and ``sigma1^2 = var(b_i) - (read-noise
part of var(b_i))``.  ``sigma0`` -- the spread at t ~ 0 -- is one more per-event
offset, indistinguishable from the write noise (and reported inside
``write_noise_sigma_s``), so it is not estimated here.  Fits are given per level and
pooled.  Devices whose programming did not converge are left out of the fits (their
data are kept).
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
    choose_devices,
    pulse_devices,
    quantisation_var,
    read_mean,
    split_flat,
    stage_rng,
)
from drivers.board import Board
from protocols.unit_names import AcceptsOldSecondNames

STAGE = "drift"


class DriftParams(ProcedureParams):
    n_devices: int = Field(2048, ge=8, description="devices in the sample, split over the levels")
    levels: tuple[float, ...] = Field((0.2, 0.4, 0.6, 0.8), min_length=1,
                                      description="target levels as fractions of the window")
    t_max_sec: float = Field(1e4, gt=0, description="last read, seconds after programming (board clock)")
    n_times: int = Field(9, ge=2, description="log-spaced read times from 1 s to t_max_sec (plus t ~ 0)")
    n_reads: int = Field(16, ge=1, description="reads averaged at each time")
    t0_sec: float = Field(1.0, gt=0, description="time constant of the log law")
    program_tolerance_rel: float = Field(0.02, gt=0, description="write-verify tolerance, fraction of the window")
    program_max_iter: int = Field(40, ge=1, le=1000)
    release_pulses: int = Field(1, ge=0, description="pulses of one unverified write event after programming "
                                                     "(0: follow the verified state itself)")


class DriftLevel(BaseModel):
    level: float
    target_s: float
    n_devices: int
    mu_s: float
    mu_sigma_s: float
    sigma1_s: float


class DriftResult(AcceptsOldSecondNames):
    model: str = "log"
    mu_s: float = Field(description="mean shift per unit ln(1+t/t0) (positive = conductance decreases)")
    mu_sigma_s: float
    sigma1_s: float = Field(description="growth of the spread per unit ln(1+t/t0)")
    sigma1_sigma_s: float
    t0_sec: float
    times_sec: list[float]
    mean_shift_s: list[float] = Field(description="mean change from t~0 over all fitted devices, per time")
    spread_s: list[float] = Field(description="spread of the change, read noise removed, per time")
    per_level: list[DriftLevel]
    converged_fraction: float
    sample: SampleInfo



def position_in_batch(flat: np.ndarray) -> np.ndarray:
    """Where each device falls, in [0, 1), in a batch the board works through in index order.

    Boards take a batch's devices in ascending flat index (the Board contract sorts
    them): a sequential board (the VISA bench, one device at a time) reaches device k
    at ``start + position * duration``; a parallel board finishes a batch in
    microseconds, so the correction vanishes there.
    """
    rank = np.empty(flat.size)
    rank[np.argsort(flat, kind="stable")] = np.arange(flat.size)
    return (rank + 0.5) / max(flat.size, 1)


def read_at_log_times(board: Board, flat: np.ndarray, t_max_sec: float, n_times: int, n_reads: int,
                      progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``flat`` now and at ``n_times`` log-spaced times up to ``t_max_sec`` on the board clock.

    Returns (times actually read relative to the start, s; reads of shape
    (n_times + 1, devices); the board-clock time of each device's averaged read,
    same shape, interpolated by its position in the read sweeps).
    """
    t_start = board.clock()
    times = np.concatenate([[0.0], np.logspace(0.0, np.log10(t_max_sec), n_times)])
    reads = np.empty((times.size, flat.size))
    actual = np.empty(times.size)
    device_times = np.empty((times.size, flat.size))
    # mean position of a device over n_reads consecutive sweeps, as a fraction of their total time
    where = (position_in_batch(flat) + (n_reads - 1) / 2.0) / n_reads
    for k, t in enumerate(times):
        now = board.clock() - t_start
        if t > now:
            board.wait(t - now)
        before = board.clock()
        actual[k] = before - t_start
        reads[k] = read_mean(board, flat, n_reads)
        device_times[k] = before + (board.clock() - before) * where
        if progress:
            progress(1.0)
    return actual, reads, device_times

def measure_drift(board: Board, params: DriftParams | None = None, *, g_min_s: float, g_max_s: float,
                  pool: np.ndarray | None = None, read_noise_rel: float = 0.0, progress: Progress = None) -> Measured:
    """Program levels across the window [g_min_s, g_max_s] and follow them on the board clock."""
    params = params or DriftParams()
    rng = stage_rng(params.seed, STAGE)
    flat = choose_devices(board, params.n_devices, rng, pool, what="the drift sample")
    n_lv = len(params.levels)
    level_idx = rng.permutation(np.arange(flat.size) % n_lv)
    window = g_max_s - g_min_s
    targets = g_min_s + np.asarray(params.levels)[level_idx] * window
    rows, cols = split_flat(board, flat)
    prog = board.program(rows, cols, targets, params.program_tolerance_rel * window, params.program_max_iter)
    written = np.full(flat.size, board.clock())  # write-verify's last round: as good as it gets without release
    if params.release_pulses:
        # alternate polarity over devices so that the levels stay put on average
        sign = np.where(np.arange(flat.size) % 2 == 0, 1, -1)
        before = board.clock()
        pulse_devices(board, flat, sign * params.release_pulses)
        written = before + (board.clock() - before) * position_in_batch(flat)
    actual, reads, device_times = read_at_log_times(board, flat, params.t_max_sec, params.n_times, params.n_reads,
                                                    progress)
    since_write = np.maximum(device_times - written[None, :], 0.0)  # each device's own age at each read
    result = analyse_drift(since_write, reads, level_idx, prog.converged, params, read_noise_rel,
                           quantisation_var(board), targets)
    result.sample = SampleInfo.from_counts(np.zeros(flat.size, dtype=np.int64),
                                           f"uniform random over responsive devices, {n_lv} levels; "
                                           f"write-verify used {prog.pulses} pulses in all")
    raw = Raw()
    raw.add("devices", flat, "flat index (row*cols+col)")
    raw.add("level_index", level_idx, "index into levels")
    raw.add("targets", targets, "S")
    raw.add("converged", prog.converged, "bool")
    raw.add("program_iterations", prog.iterations, "write-verify rounds")
    raw.add("times", actual, "s")
    raw.add("g", reads, "S")
    raw.attrs["levels"] = list(params.levels)
    raw.attrs["program_pulses_total"] = int(prog.pulses)
    return Measured(result, raw)


def analyse_drift(times: np.ndarray, reads: np.ndarray, level_idx: np.ndarray, converged: np.ndarray,
                  params: DriftParams, read_noise_rel: float, q_var: float, targets: np.ndarray) -> DriftResult:
    """``times``: one age per read time (T+1,), or each device's own age (T+1, N)."""
    times = np.asarray(times, dtype=float)
    lt = np.log1p(times / params.t0_sec)
    if lt.ndim == 1:
        lt = np.broadcast_to(lt[:, None], reads.shape)
    xc = lt - lt.mean(axis=0)
    sxx = np.sum(xc * xc, axis=0)
    change = reads[1:] - reads[0]  # (T, N)
    # per-device straight line in L (with intercept: no single read carries the whole reference)
    slopes = (xc * reads).sum(axis=0) / sxx
    read_var = (read_noise_rel**2 * reads**2 + q_var) / params.n_reads  # variance of each averaged read
    slope_noise = (xc**2 * read_var).sum(axis=0) / sxx**2
    rv = read_var[1:] + read_var[0]  # read-noise variance of each change from t ~ 0

    def fit(sel: np.ndarray) -> tuple[float, float, float, float]:
        b = slopes[sel]
        if b.size < 2:
            return float("nan"), float("nan"), float("nan"), float("nan")
        mu = -float(b.mean())
        mu_se = float(b.std(ddof=1) / np.sqrt(b.size))
        s1_2 = float(b.var(ddof=1) - slope_noise[sel].mean())
        s1 = float(np.sqrt(max(s1_2, 0.0)))
        # uncertainty of sigma1 from that of the variance (normal approximation)
        s1_se = float(b.var(ddof=1) * np.sqrt(2.0 / (b.size - 1)) / (2 * max(s1, 1e-30)))
        return mu, mu_se, s1, s1_se

    ok = np.asarray(converged, dtype=bool)
    if ok.sum() < 2:
        ok = np.ones_like(ok)  # nothing converged: fit everything rather than nothing
    mu, mu_se, s1, s1_se = fit(ok)
    per_level = []
    for k, lv in enumerate(params.levels):
        sel = ok & (level_idx == k)
        m, m_se, s, _ = fit(sel)
        per_level.append(DriftLevel(level=lv, target_s=float(targets[level_idx == k][0]) if np.any(level_idx == k)
                                    else float("nan"), n_devices=int(sel.sum()), mu_s=m, mu_sigma_s=m_se, sigma1_s=s))
    spread = np.sqrt(np.maximum(change[:, ok].var(axis=1, ddof=1) - rv[:, ok].mean(axis=1), 0.0))
    return DriftResult(mu_s=mu, mu_sigma_s=mu_se, sigma1_s=s1, sigma1_sigma_s=s1_se, t0_sec=params.t0_sec,
                       times_sec=(times if times.ndim == 1 else times.mean(axis=1)).tolist(), mean_shift_s=[0.0] + change[:, ok].mean(axis=1).tolist(),
                       spread_s=[0.0] + spread.tolist(), per_level=per_level,
                       converged_fraction=float(np.mean(converged)),
                       sample=SampleInfo(n_devices=int(reads.shape[1]), selection=""))
