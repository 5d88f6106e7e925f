"""Pulse response: potentiation/depression curves across the window, soft-bounds fits.

A random sample of responsive devices is first RESET towards the lower bound
(``precondition_pulses``), then given ``steps`` SET write events growing geometrically
from ``pulses_per_step`` pulses to ``curve_pulses`` in all (read ``n_reads`` times after
each), then as many RESET events: one potentiation and one depression curve per device,
with the exact cumulative pulse count as the abscissa.  The growing events let a slow
power-law approach (gamma ~ 2) come close to its bound; with equal short events such a
curve ends far from it, and the fit trades gamma against the window.

Fits.  Every device's SET curve is fitted with the soft-bounds law
``dG/dn = alpha_set (1-x)**gamma_set`` (bound ``g_hi``) and its RESET curve with
``alpha_reset x**gamma_reset`` (bound ``g_lo``), the exponents shared by all devices
(:mod:`calibration.fits`).  Fitting the trajectory against the pulse count -- not
increments against a noisy conductance -- keeps write noise out of the abscissa,
and averaging the per-device ``alpha`` gives every device the same weight (pooling
increments by conductance bins would over-weight slow devices, which spend more
pulses in each bin).  ``W = g_hi - g_lo`` per device; the population model that the
training loop uses is ``alpha = mean(alpha_i)``, ``g_min = mean(g_lo)``,
``g_max = mean(g_hi)``, and the mean step per pulse at mid-window is
``mean(alpha_i) * 0.5**gamma``.

Curves.  The mean step per pulse as a function of conductance (and its spread over
devices) is also given model-free: increments per pulse binned by the midpoint of
the two reads around each write event (the write offsets of both reads are
uncorrelated with their difference), averaged per device first, then over devices.
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
    read_mean,
    stage_rng,
)
from calibration.fits import discrete_alpha, fit_decay_profile
from calibration.report import SoftBoundsFit
from drivers.board import Board

STAGE = "pulse_response"
POLARITIES = ("set", "reset")


class PulseResponseParams(ProcedureParams):
    n_devices: int = Field(1024, ge=8, description="devices in the sample (the write-noise sample takes the "
                           "well-fitted ones first: it then knows their windows)")
    pulses_per_step: int = Field(8, ge=1, description="pulses of each write event along the curves")
    steps: int = Field(48, ge=4, description="write events per polarity")
    precondition_pulses: int = Field(1024, ge=0, description="RESET pulses given first (towards g_min; a slow "
                                     "power-law approach needs many)")
    curve_pulses: int = Field(4096, ge=1, description="cumulative pulses of each curve: the events grow "
                              "geometrically from pulses_per_step to reach it, so that a slow power-law approach "
                              "(gamma ~ 2) still comes close to its bound; at most steps x pulses_per_step "
                              "gives equal events")
    n_reads: int = Field(2, ge=1, description="reads averaged after each write event")
    n_bins: int = Field(20, ge=3, description="conductance bins of the model-free step curves")
    n_boot: int = Field(200, ge=10)
    gamma_range: tuple[float, float] = Field((0.3, 4.0), description="search range of the soft-bounds exponent")


class StepCurve(BaseModel):
    """Mean |step| per pulse versus conductance, model-free."""

    g_s: list[float]
    # None, not NaN: JSON has no NaN (pydantic writes null), and the file must read back
    step_mean_s: list[float | None] = Field(description="mean over devices; None where no device reached the bin")
    step_sd_s: list[float | None] = Field(description="spread over devices of the per-device mean step; None where "
                                                      "fewer than two devices reached the bin")
    n_devices: list[int]


class PulseResponseResult(BaseModel):
    fits: dict[str, SoftBoundsFit]
    step_mid_s: dict[str, float] = Field(description="mean step per pulse at mid-window, by polarity")
    step_mid_sigma_s: dict[str, float]
    gamma_sigma: dict[str, float] = Field(default_factory=dict, description="standard error of the shared gamma")
    step_d2d_cv_raw: dict[str, float] = Field(description="CV over devices of fitted alpha (includes fit noise)")
    window_s: dict[str, float]
    window_sigma_s: dict[str, float]
    window_d2d_cv_raw: float = Field(description="CV over devices of the fitted window W (includes fit noise)")
    x_equilibrium: float = Field(description="state where the mean SET and RESET steps are equal")
    curves: dict[str, StepCurve]
    n_fit_ok: int
    sample: SampleInfo


def event_pulses(params: PulseResponseParams) -> np.ndarray:
    """Pulses of each of the ``steps`` events of a curve: ``pulses_per_step`` growing geometrically so
    that they add up to about ``curve_pulses`` (equal events when that is not more than steps x pulses_per_step)."""
    m, k = params.pulses_per_step, params.steps
    if params.curve_pulses <= m * k:
        return np.full(k, m, dtype=np.int64)
    lo, hi = 1.0, 2.0
    while m * (hi**k - 1) / (hi - 1) < params.curve_pulses:
        hi *= 2
    for _ in range(60):
        r = 0.5 * (lo + hi)
        lo, hi = (r, hi) if m * (r**k - 1) / (r - 1) < params.curve_pulses else (lo, r)
    return np.maximum(np.round(m * lo ** np.arange(k)), 1).astype(np.int64)


def _step_curves(n_dev: int, y: np.ndarray, sign: int, m: np.ndarray, edges: np.ndarray) -> StepCurve:
    """Per-device mean increment per pulse in conductance bins, then mean/sd over devices (``m``: pulses
    of each event)."""
    inc = sign * np.diff(y, axis=0) / np.asarray(m, float)[:, None]  # (steps, devices), in the pulsed direction
    mid = 0.5 * (y[1:] + y[:-1])
    nb = edges.size - 1
    b = np.clip(np.searchsorted(edges, mid, side="right") - 1, 0, nb - 1)
    inside = (mid >= edges[0]) & (mid <= edges[-1]) & np.isfinite(inc)
    dev = np.broadcast_to(np.arange(n_dev)[None, :], inc.shape)
    sums = np.zeros((nb, n_dev))
    counts = np.zeros((nb, n_dev))
    np.add.at(sums, (b[inside], dev[inside]), inc[inside])
    np.add.at(counts, (b[inside], dev[inside]), 1.0)
    present = counts > 0
    per_dev = np.where(present, sums / np.maximum(counts, 1), 0.0)
    n_in = present.sum(axis=1)
    mean = np.where(n_in > 0, per_dev.sum(axis=1) / np.maximum(n_in, 1), np.nan)
    dev2 = np.where(present, (per_dev - mean[:, None]) ** 2, 0.0).sum(axis=1)
    sd = np.where(n_in > 1, np.sqrt(dev2 / np.maximum(n_in - 1, 1)), np.nan)
    centers = 0.5 * (edges[1:] + edges[:-1])
    def listed(values: np.ndarray) -> list[float | None]:
        return [float(v) if np.isfinite(v) else None for v in values]

    return StepCurve(g_s=centers.tolist(), step_mean_s=listed(mean), step_sd_s=listed(sd),
                     n_devices=n_in.astype(int).tolist())


def equilibrium_x(set_fit: SoftBoundsFit, reset_fit: SoftBoundsFit) -> float:
    """x in (0, 1) where alpha_s (1-x)**gs == alpha_r x**gr (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        x = 0.5 * (lo + hi)
        if set_fit.alpha_s * (1 - x) ** set_fit.gamma > reset_fit.alpha_s * x**reset_fit.gamma:
            lo = x
        else:
            hi = x
    return 0.5 * (lo + hi)


def soft_bounds_step(alpha_s: float, gamma: float, x: np.ndarray, polarity: str) -> np.ndarray:
    """The soft-bounds law: mean |step| of one pulse at window position ``x`` in [0, 1] (siemens),
    ``alpha (1 - x)**gamma`` for SET and ``alpha x**gamma`` for RESET.  The one definition the fits,
    the report and the host's conductance map share."""
    return alpha_s * ((1 - x) if polarity == "set" else x) ** gamma


def model_step(fit: SoftBoundsFit, polarity: str, g_s: np.ndarray) -> np.ndarray:
    """Mean |step| per pulse of the population model at conductance ``g_s``."""
    x = np.clip((np.asarray(g_s, float) - fit.g_min_s) / (fit.g_max_s - fit.g_min_s), 0.0, 1.0)
    return soft_bounds_step(fit.alpha_s, fit.gamma, x, polarity)


def measure_pulse_response(board: Board, params: PulseResponseParams | None = None,
                           pool: np.ndarray | None = None, progress: Progress = None) -> Measured:
    """SET then RESET curves of a device sample drawn from ``pool`` (default: whole array)."""
    params = params or PulseResponseParams()
    rng = stage_rng(params.seed, STAGE)
    flat = choose_devices(board, params.n_devices, rng, pool, what="the pulse-response sample")
    m, k, r = event_pulses(params), params.steps, params.n_reads
    pulses = np.zeros(flat.size, dtype=np.int64)
    events = 0
    if params.precondition_pulses:
        events += pulse_devices(board, flat, -params.precondition_pulses, split=True)
        pulses += params.precondition_pulses
    curves = {}
    for pol, sign in (("set", +1), ("reset", -1)):
        y = np.empty((k + 1, flat.size))
        y[0] = read_mean(board, flat, r) if pol == "set" else curves["set"][-1]
        for i in range(1, k + 1):
            pulse_devices(board, flat, sign * int(m[i - 1]), split=True)
            y[i] = read_mean(board, flat, r)
            if progress:
                progress(1.0)
        curves[pol] = y
        pulses += int(m.sum())
        events += k
    n_axis = np.concatenate([[0], np.cumsum(m)])
    result, fit_arrays = analyse_pulse_response(n_axis, curves["set"], curves["reset"], m, params, rng)
    result.sample = SampleInfo.from_counts(pulses, "uniform random over responsive devices", events)
    raw = Raw()
    raw.add("devices", flat, "flat index (row*cols+col)")
    raw.add("pulses", n_axis, "pulses")
    raw.add("g_set", curves["set"], "S")
    raw.add("g_reset", curves["reset"], "S")
    for name, (arr, unit) in fit_arrays.items():
        raw.add(name, arr, unit)
    return Measured(result, raw)


def analyse_pulse_response(n_axis: np.ndarray, g_set: np.ndarray, g_reset: np.ndarray, m: np.ndarray,
                           params: PulseResponseParams, rng: np.random.Generator):
    """Fits and curves from the (steps+1, devices) SET and RESET curves."""
    fit_s = fit_decay_profile(n_axis, g_set.T, -1.0, params.gamma_range)
    # the device was seen at the start of its SET curve: its lower bound cannot lie above that level
    fit_r = fit_decay_profile(n_axis, g_reset.T, +1.0, params.gamma_range, bound_limit_s=g_set[0])
    g_hi, g_lo = fit_s.bound_s, fit_r.bound_s
    w = g_hi - g_lo
    ok = fit_s.ok & fit_r.ok & np.isfinite(w) & (w > 0)
    if ok.sum() >= 3:
        w_med = np.median(w[ok])
        ok &= (w > 0.2 * w_med) & (w < 5 * w_med)
    if ok.sum() < 3:
        raise ValueError("the pulse-response curves could not be fitted for enough devices; "
                         "check the pulse profiles (do the devices move?)")
    alpha = {"set": discrete_alpha(fit_s.c, fit_s.gamma, w), "reset": discrete_alpha(fit_r.c, fit_r.gamma, w)}
    gamma = {"set": fit_s.gamma, "reset": fit_r.gamma}
    for a in alpha.values():
        ok &= np.isfinite(a) & (a > 0)
    idx = bootstrap_indices(rng, int(ok.sum()), params.n_boot)
    fits, step_mid, step_sig, cv_raw = {}, {}, {}, {}
    g_min, g_max = float(g_lo[ok].mean()), float(g_hi[ok].mean())
    for pol in POLARITIES:
        a = alpha[pol][ok]
        fits[pol] = SoftBoundsFit(alpha_s=float(a.mean()), gamma=float(gamma[pol]), g_min_s=g_min, g_max_s=g_max)
        half = 0.5 ** gamma[pol]
        step_mid[pol] = float(a.mean() * half)
        step_sig[pol] = float(a[idx].mean(axis=1).std(ddof=1) * half)
        cv_raw[pol] = float(a.std(ddof=1) / a.mean())
    edges = np.linspace(g_min, g_max, params.n_bins + 1)
    curves = {"set": _step_curves(g_set.shape[1], g_set, +1, m, edges),
              "reset": _step_curves(g_reset.shape[1], g_reset, -1, m, edges)}
    result = PulseResponseResult(
        fits=fits, step_mid_s=step_mid, step_mid_sigma_s=step_sig, step_d2d_cv_raw=cv_raw,
        gamma_sigma={"set": float(fit_s.gamma_sigma), "reset": float(fit_r.gamma_sigma)},
        window_s={"g_min_s": g_min, "g_max_s": g_max},
        window_sigma_s={"g_min_s": float(g_lo[ok][idx].mean(axis=1).std(ddof=1)),
                        "g_max_s": float(g_hi[ok][idx].mean(axis=1).std(ddof=1))},
        window_d2d_cv_raw=float(w[ok].std(ddof=1) / w[ok].mean()),
        x_equilibrium=equilibrium_x(fits["set"], fits["reset"]), curves=curves, n_fit_ok=int(ok.sum()),
        sample=SampleInfo(n_devices=int(g_set.shape[1]), selection=""),
    )
    arrays = {"alpha_set_s": (alpha["set"], "S"), "alpha_reset_s": (alpha["reset"], "S"),
              "g_hi_s": (g_hi, "S"), "g_lo_s": (g_lo, "S"), "fit_ok": (ok, "bool"),
              "g_set_end_fit_s": (fit_s.predict_s(n_axis[-1:], -1.0)[:, 0], "S"),
              "sse_set": (fit_s.sse * 1e-12, "S^2"), "sse_reset": (fit_r.sse * 1e-12, "S^2")}
    return result, arrays
