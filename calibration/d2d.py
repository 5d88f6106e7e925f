"""Device-to-device spread of the step size and of the window.

Step size.  The write-noise stage estimates every device's step relative to the
population model (``rho_i``, per polarity) from many events near mid-window, with
a known estimation variance ``var_i``.  The device-to-device coefficient of
variation removes that noise: ``CV^2 = (var(rho) - mean(var_i)) / mean(rho)^2``.
Without write-noise data it falls back to the per-device pulse-response fits (CV
including fit noise, an upper bound).

Window.  The upper bound ``g_hi`` of a device is well determined only when its SET
curve came close to it; the spread of the window is taken over the devices whose
fitted remaining distance at the end of the SET curve is below ``saturation`` of
their window (their speed, and so the selection, is independent of the window),
with a robust scale (1.4826 MAD / median).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field


class D2dResult(BaseModel):
    step_cv: dict[str, float] = Field(description="device-to-device CV of the step, by polarity")
    step_cv_sigma: dict[str, float]
    step_cv_source: str
    window_cv: float | None = Field(None, description="device-to-device CV of the window g_max - g_min")
    g_max_cv: float | None = None
    window_devices: int = 0


def _noise_corrected_cv(rho: np.ndarray, var: np.ndarray, rng: np.random.Generator, n_boot: int = 200):
    rho, var = np.asarray(rho, float), np.asarray(var, float)
    ok = np.isfinite(rho) & np.isfinite(var)
    rho, var = rho[ok], var[ok]

    def cv(r, v):
        return float(np.sqrt(max(r.var(ddof=1) - v.mean(), 0.0)) / r.mean())

    idx = rng.integers(0, rho.size, size=(n_boot, rho.size))
    boot = [cv(rho[i], var[i]) for i in idx]
    return cv(rho, var), float(np.std(boot, ddof=1))


def device_to_device(*, rho: dict[str, np.ndarray] | None = None, rho_var: dict[str, np.ndarray] | None = None,
                     alpha_fit: dict[str, np.ndarray] | None = None, fit_ok: np.ndarray | None = None,
                     g_hi_s: np.ndarray | None = None, g_lo_s: np.ndarray | None = None,
                     g_end_set_s: np.ndarray | None = None, saturation: float = 0.05,
                     rng: np.random.Generator | None = None) -> D2dResult:
    rng = rng or np.random.default_rng(0)
    cvs, sig = {}, {}
    if rho is not None and rho_var is not None:
        source = "write-noise per-device step, estimation noise removed"
        for pol in ("set", "reset"):
            cvs[pol], sig[pol] = _noise_corrected_cv(rho[pol], rho_var[pol], rng)
    elif alpha_fit is not None:
        source = "pulse-response per-device fits (includes fit noise: an upper bound)"
        ok = np.ones(len(alpha_fit["set"]), bool) if fit_ok is None else np.asarray(fit_ok, bool)
        for pol in ("set", "reset"):
            a = np.asarray(alpha_fit[pol])[ok]
            cvs[pol] = float(a.std(ddof=1) / a.mean())
            sig[pol] = float(cvs[pol] / np.sqrt(2 * max(a.size - 1, 1)))
    else:
        raise ValueError("device_to_device needs write-noise or pulse-response per-device data")
    window_cv = g_max_cv = None
    n_win = 0
    if g_hi_s is not None and g_lo_s is not None and g_end_set_s is not None:
        ok = np.ones(len(g_hi_s), bool) if fit_ok is None else np.asarray(fit_ok, bool)
        w = np.asarray(g_hi_s) - np.asarray(g_lo_s)
        sat = ok & (w > 0) & ((np.asarray(g_hi_s) - np.asarray(g_end_set_s)) < saturation * w)
        n_win = int(sat.sum())
        if n_win >= 10:
            def rcv(v):
                med = np.median(v)
                return float(1.4826 * np.median(np.abs(v - med)) / med)
            window_cv = rcv(w[sat])
            g_max_cv = rcv(np.asarray(g_hi_s)[sat])
    return D2dResult(step_cv=cvs, step_cv_sigma=sig, step_cv_source=source, window_cv=window_cv,
                     g_max_cv=g_max_cv, window_devices=n_win)
