"""Random-walk experiment for the persistent write error ``sigma_w``: the write-noise stage's second estimate.

Why.  The moment fit of :mod:`calibration.write_noise_analysis` separates ``sigma_w^2`` from the
cycle-to-cycle, relaxation and read noise of single events of 1..32 pulses.  Where ``sigma_w^2`` is a
few % of one event's change variance (0.2 uS next to a large cycle-to-cycle spread or read noise and
``sigma_r0`` = 0.4 uS) it cannot: on a 48x48 array it missed by up to 25 %.  But the three noises
behave differently over many events: the write error is *persistent* (it stays in the state, so
unverified writes random-walk), the relaxation offset is redrawn at every write and the read noise
at every read -- neither accumulates.

Design.  After the stage's events, on its usable (not stuck) devices, near the SET/RESET balance
level it programmed them to: one discarded RESET event, then ``K`` write events of ONE
width-modulated partial pulse each (a :class:`~drivers.board.PulseBatch` with per-device last
widths, one batch per event for every device), alternating SET and RESET so that the mean stays
put, with an averaged read (``n_reads``) of every device after the discarded event and after every
``m`` events (the checkpoints; ``m`` even, so every checkpoint follows a RESET and the SET/RESET
zigzag never enters a difference).  The width is ``walk_width_ratio`` x the profile width of the
polarity, raised to the effective ``min_pulse_width_sec`` and made on the board's timing grid
(checked against the effective limits like every pulse); the ratio ``r`` actually made is used.

Size.  ``K = clip((walk_spread_rel * window / sigma_w0)^2, walk_min_events, walk_max_events)``
(rounded down to a multiple of ``m``), ``sigma_w0`` the moment fit's estimate (at least its
bootstrap error, and 0.1 % of the window): the walk's spread ``sqrt(K) sigma_w0`` stays within
``walk_spread_rel`` (5 %) of the window wherever the cap and floor allow, so that the window
clip and the soft bounds' pull do not shape it (at sigma_w = 3 uS the floor of 16 events lets it
reach 12 %: the clip is still > 3 sigma away from a device near balance).

Analysis.  Per device, second differences of checkpoint reads at lag ``L`` (checkpoints),
``d = y[j+2L] - 2 y[j+L] + y[j]``, cancel the device's own linear drift (the SET/RESET imbalance of
a device whose steps differ from the population's, which grows the squared *first* difference like
``K^2``)::

    E[d^2] = 2 L m s^2 + 6 c,     s^2 = sigma_w^2 + r^2 sigma_rel^2 <mu^2>

``c``: the per-checkpoint noise (relaxation spread and averaged read noise), absorbed by the fit;
``s^2``: the variance one event adds to the state, the write error plus the partial pulse's
cycle-to-cycle part (``r^2 sigma_rel^2`` times the mean square step at the walk's states: the
moment fit's ``sigma_rel`` and the per-device steps it measured near balance; ~1 % of s^2 in the
worst case, subtracted).  The soft bounds' pull on a deviation, ``theta ~ r kappa`` per event
(~2-4e-4), enters the second difference only at second order, ``(theta L m)^2 < 1e-3``; the curvature
of a device's mean path as it settles to its own balance point, ``(G0 - G*) (theta L m)^2``, is below
1e-3 of ``2 L m s^2``.  Both are left uncorrected: on the emulator (1024 devices from mid-window,
10 seeds each, ``tests/test_write_walk.py``'s set-up) the walk's mean error was +0.1 +- 0.4 % at
sigma_w = 1 uS (K = 24), +0.5 +- 0.6 % at 2 uS and +0.4 +- 0.5 % at 3 uS (K = 16: the walk reaches
furthest towards the window's edges there), its bootstrap error 1.6-2.1 % against a scatter of
1.2-1.8 %.  The fit: non-negative weighted least squares of
the device means of ``d^2`` at lags ``1, 2, 3, 4, 6, 8, 12, 16, ...`` up to a third of the
checkpoints (weights: the inverse variance of each lag's device mean); uncertainty: the whole fit
redone on each bootstrap resample of the devices, the c2c subtraction with the moment fit's
replicate of ``sigma_rel`` (same seeded generator as the stage).  In simulation (384 devices,
``s^2`` = 0.04 uS^2, ``c`` = 0.33 uS^2, K = 256, m = 2) the lag fit is unbiased within 1 % with a
relative error of ~2.3 % on ``s^2`` (1.2 % on ``sigma_w``).

Combination.  The walk's events are not the moment fit's, so the two estimates are independent:
the reported ``sigma_w`` is their inverse-variance weighted mean (weights from the bootstrap
variances), and its replicates the same weighted mean of the two replicate sets (paired by index
with the moment fit's replicates of ``sigma_r0`` and ``sigma_rel``, which the threshold's
bootstrap reads together).  The moment fit's own estimate stays in the result as
``moment_sigma_w_s`` (a diagnostic).
"""

from __future__ import annotations

import logging
import math

import numpy as np
from pydantic import BaseModel, Field

from calibration.common import (
    ProcedureParams,
    Progress,
    bootstrap_indices,
    read_repeated,
    split_flat,
)
from calibration.fits import nonneg_wls
from drivers.board import Board, PulseBatch
from drivers.limits import check_pulse_widths

log = logging.getLogger(__name__)

LAGS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


class WalkParams(ProcedureParams):
    """The random-walk experiment's parameters (fields of :class:`calibration.write_noise.WriteNoiseParams`)."""

    walk: bool = Field(True, description="run the random-walk experiment for sigma_w after the stage's events")
    walk_width_ratio: float = Field(0.02, gt=0, le=1, description="width of each walk event's partial pulse, as a "
                                    "fraction of its polarity's profile width (raised to min_pulse_width_sec)")
    walk_spread_rel: float = Field(0.05, gt=0, le=0.5, description="sqrt(events) x the moment fit's sigma_w at "
                                   "most this fraction of the window (between the floor and the cap)")
    walk_min_events: int = Field(16, ge=8, description="walk events at least (the floor)")
    walk_max_events: int = Field(256, ge=8, description="walk events at most (the cap)")
    walk_checkpoint_events: int = Field(2, ge=2, multiple_of=2, description="walk events between checkpoint "
                                        "reads (even: every checkpoint follows a RESET)")


class WalkResult(BaseModel):
    """What the random walk measured, and how it was combined with the moment fit."""

    sigma_w_s: float = Field(description="sigma_w from the walk alone")
    sigma_w_sigma_s: float
    event_var_s2: float = Field(description="s^2: variance one walk event adds to the state")
    c2c_var_s2: float = Field(description="the partial pulse's cycle-to-cycle part of s^2, subtracted")
    checkpoint_var_s2: float = Field(description="c: per-checkpoint noise (relaxation spread + averaged reads)")
    events: int = Field(description="K: walk events per device (after the discarded one)")
    checkpoint_events: int = Field(description="m: events between checkpoint reads")
    reads_per_checkpoint: int
    width_sec: dict[str, float] = Field(description="partial pulse width made, per polarity")
    width_ratio: dict[str, float] = Field(description="partial pulse width / profile width, per polarity")
    lags: list[int] = Field(description="lags (checkpoints) of the second differences fitted")
    lag_mean_sq_s2: list[float] = Field(description="device mean of d^2 at each lag")
    n_devices: int
    edge_fraction: float = Field(description="fraction of last checkpoint reads within 5 % of the window's edges")
    moment_weight: float = Field(description="weight of the moment fit's sigma_w in the reported one")


def walk_widths(board: Board, ratio: float) -> tuple[dict[str, float], dict[str, float]]:
    """(width made, width / profile width) per polarity: ``ratio`` x the profile width, at least the effective
    minimum width, on the board's timing grid (rounded up to the first grid point at or above the minimum)."""
    res = board.info.timing_resolution_sec
    lo = board.limits.min_pulse_width_sec
    widths, ratios = {}, {}
    for name, prof in zip(("set", "reset"), board.profiles):
        w = max(ratio * prof.width_sec, lo)
        w = max(round(w / res), math.ceil(lo / res * (1 - 1e-9)), 1) * res
        w = min(w, prof.width_sec)
        check_pulse_widths(np.array([w]), prof.width_sec, board.limits)
        widths[name], ratios[name] = float(w), float(w / prof.width_sec)
    return widths, ratios


def walk_events(params: WalkParams, sigma_w0_s: float, window_s: float) -> int:
    """K (see the module doc): ``(walk_spread_rel * window / sigma_w0)^2`` between the floor and the cap, a
    multiple of the checkpoint spacing."""
    m = params.walk_checkpoint_events
    s0 = max(sigma_w0_s, 1e-3 * window_s)
    k = int(np.clip((params.walk_spread_rel * window_s / s0) ** 2, params.walk_min_events, params.walk_max_events))
    return max(k // m, 4) * m


def run_walk(board: Board, flat: np.ndarray, n_events: int, m: int, widths: dict[str, float], n_reads: int,
             progress: Progress = None) -> np.ndarray | None:
    """The walk on the devices ``flat``: mean of ``n_reads`` reads at every checkpoint, (K/m + 1, devices).

    None, with nothing sent, on a board that cannot make partial pulses (``capabilities.partial_pulses``
    false: an FPGA board on protocol version 1)."""
    if not board.info.capabilities.partial_pulses:
        log.warning("write noise: no random walk, the board makes no partial pulses (protocol version %d); sigma_w "
                    "from the moment fit alone", board.info.protocol_version)
        return None
    rows, cols = split_flat(board, flat)
    n = flat.size
    batches = {pol: PulseBatch(rows, cols, np.full(n, pol, dtype=np.int64),
                               np.full(n, widths["set" if pol > 0 else "reset"]))
               for pol in (+1, -1)}
    y = np.empty((n_events // m + 1, n))
    board.pulse(batches[-1])  # the discarded event: every checkpoint read follows a walk event
    y[0] = read_repeated(board, flat, n_reads).mean(axis=0)
    for e in range(n_events):
        board.pulse(batches[+1 if e % 2 == 0 else -1])
        if (e + 1) % m == 0:
            y[(e + 1) // m] = read_repeated(board, flat, n_reads).mean(axis=0)
            if progress and (e + 1) % 16 == 0:
                progress(1.0)
    return y


def walk_lags(n_checkpoints: int) -> np.ndarray:
    """Lags fitted: LAGS up to a third of the checkpoints, at least (1, 2)."""
    span = n_checkpoints - 1
    lags = [L for L in LAGS if 3 * L <= span]
    return np.array(lags if len(lags) >= 2 else [1, 2])


def lag_rows(y: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """Per device, the mean square second difference of the checkpoint reads at each lag: (lags, devices)."""
    return np.stack([np.mean((y[2 * L:] - 2 * y[L:-L] + y[:-2 * L]) ** 2, axis=0) for L in lags])


def fit_walk(y: np.ndarray, m: int, c2c_per_rel2_s2: float, sigma_rel: float, boot_sigma_rel: np.ndarray,
             rng: np.random.Generator, n_boot: int) -> dict:
    """The lag fit of ``(s^2, c)`` and its bootstrap over devices; ``c2c_per_rel2_s2``: ``r^2 <mu^2>`` (the
    partial pulse's c2c variance per unit ``sigma_rel^2``).  Returns the figures and the replicates of sigma_w."""
    lags = walk_lags(y.shape[0])
    rows = lag_rows(y, lags)
    n = rows.shape[1]
    design = np.stack([2.0 * lags * m, np.full(lags.size, 6.0)], axis=1)
    weights = 1.0 / np.maximum(rows.var(axis=1, ddof=1) / n, 1e-300)
    value = nonneg_wls(design, rows.mean(axis=1), weights)
    counts = np.stack([np.bincount(b, minlength=n) for b in bootstrap_indices(rng, n, n_boot)]).astype(float)
    boot = np.array([nonneg_wls(design, rows @ cnt / n, weights) for cnt in counts])
    c2c = c2c_per_rel2_s2 * sigma_rel**2
    c2c_b = c2c_per_rel2_s2 * np.asarray(boot_sigma_rel, float)[:n_boot] ** 2
    s_w = math.sqrt(max(value[0] - c2c, 0.0))
    s_w_b = np.sqrt(np.maximum(boot[:, 0] - c2c_b, 0.0))
    return {"sigma_w_s": s_w, "boot": s_w_b, "event_var_s2": float(value[0]), "c2c_var_s2": float(c2c),
            "checkpoint_var_s2": float(value[1]), "lags": lags, "rows": rows}


def c2c_per_rel2(ratio: dict[str, float], rho2: dict[int, np.ndarray], mu_model: dict[int, np.ndarray]) -> float:
    """``r^2 <mu^2>`` per walk event (the walk alternates the polarities): the mean over devices of
    ``r_pol^2 rho_i^2 mu_model(G_i)^2``, averaged over the two polarities (``rho2``: the noise-corrected squared
    step factors of the moment analysis, ``mu_model``: the model's step at each device's walk state)."""
    vals = [ratio["set" if pol > 0 else "reset"] ** 2 * np.nanmean(rho2[pol] * mu_model[pol] ** 2)
            for pol in (+1, -1)]
    return float(np.mean(vals))


def combine(moment_s: float, moment_boot: np.ndarray, walk_s: float, walk_boot: np.ndarray) -> tuple[float, np.ndarray,
                                                                                                     float]:
    """Inverse-variance weighted mean of two independent estimates, its replicates (the same weighted mean of the
    replicates, index by index) and the first one's weight."""
    v_m = float(np.var(moment_boot, ddof=1))
    v_w = float(np.var(walk_boot, ddof=1))
    if not np.isfinite(v_w) or v_w <= 0:
        wt = 0.0 if np.isfinite(walk_s) else 1.0
    elif not np.isfinite(v_m) or v_m <= 0:
        wt = 1.0
    else:
        wt = (1.0 / v_m) / (1.0 / v_m + 1.0 / v_w)
    nb = min(len(moment_boot), len(walk_boot))
    boot = wt * np.asarray(moment_boot[:nb]) + (1.0 - wt) * np.asarray(walk_boot[:nb])
    return wt * moment_s + (1.0 - wt) * walk_s, boot, wt


def edge_fraction(y_last: np.ndarray, g_lo_s: float, g_hi_s: float) -> float:
    """Fraction of reads within 5 % of the window's edges (where the clip would shape the walk)."""
    w = g_hi_s - g_lo_s
    return float(np.mean((y_last < g_lo_s + 0.05 * w) | (y_last > g_hi_s - 0.05 * w)))
