"""Fits shared by the procedures, numpy only and vectorised over devices.

Soft-bounds trajectories
------------------------
With a soft-bounds step ``dG/dn = alpha * (1-x)**gamma`` (SET, ``x = (G-gmin)/W``)
the distance to the upper bound ``v = gmax - G`` obeys ``dv/dn = -c v**gamma`` with
``c = alpha / W**gamma``; RESET (``alpha * x**gamma``) gives the same law for the
distance ``w = G - gmin`` to the lower bound.  The solution from ``v0`` is

    v(n) = v0 * exp(-c n)                                   (gamma == 1)
    v(n) = (v0**(1-gamma) + (gamma-1) c n) ** (1/(1-gamma))  (otherwise; 0 once the base is <= 0)

:func:`fit_decay` fits ``Y(n) = bound + sign * v(n)`` to every device's trajectory at
once (per device: bound, v0, c; Levenberg-Marquardt on ``(bound, ln v0, ln c)``) for a
shared ``gamma``; :func:`fit_decay_profile` finds the shared ``gamma`` that minimises
the total squared error (golden-section search on the profile).  Working units are
microsiemens so that every number is of order one.

The continuous law loses ``kappa = c v**(gamma-1)`` of the distance per pulse where
a pulse train really loses ``1 - exp(-kappa)``; :func:`discrete_alpha` converts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

US = 1e-6  # siemens per microsiemens


def decay(v0: np.ndarray, c: np.ndarray, gamma: float | np.ndarray,
          n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """v(n) and its derivatives with respect to ln v0 and ln c (broadcast over devices x points;
    ``gamma`` a number or one per device, shaped (devices, 1))."""
    if np.ndim(gamma) > 0:
        g = np.asarray(gamma, float)
        one = np.abs(g - 1.0) < 1e-6
        if not one.any():
            return _power_decay(v0, c, g, n)
        ve = v0 * np.exp(-c * n)
        if one.all():
            return ve, ve, -c * n * ve
        vp, d0, dc = _power_decay(v0, c, np.where(one, 2.0, g), n)
        return np.where(one, ve, vp), np.where(one, ve, d0), np.where(one, -c * n * ve, dc)
    if abs(gamma - 1.0) < 1e-6:
        v = v0 * np.exp(-c * n)
        return v, v, -c * n * v
    return _power_decay(v0, c, gamma, n)


def _power_decay(v0, c, gamma, n):
    a = 1.0 - gamma
    v0a = v0**a
    base = v0a - a * c * n
    ok = base > 0
    safe = np.where(ok, base, 1.0)
    v = np.where(ok, safe ** (1.0 / a), 0.0)
    ratio = np.where(ok, v / safe, 0.0)
    return v, ratio * v0a, -ratio * c * n


@dataclass
class DecayFit:
    """Per-device fit of ``Y(n) = bound + sign * v(n)`` (siemens, per-pulse units)."""

    bound_s: np.ndarray
    v0_s: np.ndarray
    c: np.ndarray  # in microsiemens**(1-gamma) per pulse
    gamma: float
    sse: np.ndarray  # microsiemens**2
    n_points: np.ndarray
    ok: np.ndarray
    gamma_sigma: float = float("nan")  # standard error of the shared gamma (batch means over device groups)

    def predict_s(self, n: np.ndarray, sign: float) -> np.ndarray:
        v, _, _ = decay(self.v0_s[:, None] / US, self.c[:, None], self.gamma, np.asarray(n, float)[None, :])
        return self.bound_s[:, None] + sign * v * US


def _init_params(n: np.ndarray, y: np.ndarray, sign: float) -> np.ndarray:
    """Starting point (bound, ln v0, ln c) for gamma = 1 from the shape of each trajectory (uS)."""
    k = y.shape[1]
    tail = np.nanmean(y[:, -max(2, k // 8):], axis=1)
    head = y[:, 0]
    span = np.abs(tail - head)
    span = np.maximum(span, 1e-3)
    bound = tail - sign * 0.05 * span  # a little beyond the last points
    v0 = np.maximum(sign * (head - bound), 1e-3)
    progress = np.abs(y - head[:, None]) / np.abs(bound - head)[:, None]
    crossed = progress >= 1 - np.exp(-1.0)
    first = np.where(crossed.any(axis=1), crossed.argmax(axis=1), k - 1)
    n_e = np.maximum(n[first], n[1] if k > 1 else 1.0)
    return np.stack([bound, np.log(v0), np.log(1.0 / n_e)], axis=1)


def _project(th: np.ndarray, rows: np.ndarray, sign: float, bound_limit: np.ndarray | None) -> np.ndarray:
    """Hold the bound (column 0) at its limit (see :func:`_lm`); a lower bound also stays >= 0."""
    if bound_limit is not None:
        lim = bound_limit[rows]
        # a lower bound also stays >= 0: no device conducts negatively
        th[:, 0] = np.clip(th[:, 0], 0.0, lim) if sign > 0 else np.maximum(th[:, 0], lim)
    return th


def _decay_model(th: np.ndarray, rows: np.ndarray, n: np.ndarray, mask: np.ndarray, sign: float,
                 gamma: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and Jacobian (in bound, ln v0, ln c) of the devices ``rows`` at parameters ``th``."""
    g = gamma if np.ndim(gamma) == 0 else np.asarray(gamma, float)[rows][:, None]
    v, dv0, dc = decay(np.exp(th[:, 1])[:, None], np.exp(th[:, 2])[:, None], g, n[None, :])
    pred = th[:, 0][:, None] + sign * v
    jac = np.empty(v.shape[:2] + (3,))
    jac[:, :, 0] = 1.0
    jac[:, :, 1] = sign * dv0
    jac[:, :, 2] = sign * dc
    jac *= mask[rows][:, :, None]
    return pred, jac


def _lm(n: np.ndarray, y: np.ndarray, mask: np.ndarray, sign: float, gamma: float, theta: np.ndarray,
        max_iter: int = 60, bound_limit: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised Levenberg-Marquardt over the devices still improving; returns (theta, sse).

    ``bound_limit`` (uS, per device): the bound may not pass it -- an upper limit of a lower bound
    (``sign`` > 0), a lower limit of an upper bound (``sign`` < 0); steps are projected onto it.
    """

    def project(th, rows):
        return _project(th, rows, sign, bound_limit)

    def model(th, rows):
        return _decay_model(th, rows, n, mask, sign, gamma)

    theta = project(theta, np.arange(theta.shape[0]))

    theta = theta.copy()
    yz = np.where(mask, y, 0.0)
    every = np.arange(theta.shape[0])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        pred, jac = model(theta, every)
        res = np.where(mask, yz - pred, 0.0)
        sse = (res**2).sum(axis=1)
        lam = np.full(theta.shape[0], 1e-3)
        eye = np.eye(3)
        active = np.isfinite(sse)
        for _ in range(max_iter):
            rows = np.flatnonzero(active)
            if rows.size == 0:
                break
            j, r = jac[rows], res[rows]
            jt = j.transpose(0, 2, 1)
            jtj = jt @ j
            jtr = (jt @ r[:, :, None])[:, :, 0]
            diag = np.einsum("nii->ni", jtj)
            a = jtj + lam[rows, None, None] * (diag[:, :, None] * eye + 1e-9 * eye)
            try:
                step = np.linalg.solve(a, jtr[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                step = np.zeros((rows.size, 3))
            step[:, 1:] = np.clip(step[:, 1:], -2.0, 2.0)
            trial = project(theta[rows] + step, rows)
            p2, j2 = model(trial, rows)
            r2 = np.where(mask[rows], yz[rows] - p2, 0.0)
            s2 = (r2**2).sum(axis=1)
            old = sse[rows]
            better = np.isfinite(s2) & (s2 < old)
            rel = np.where(better, (old - s2) / np.maximum(old, 1e-12), 0.0)
            b_rows = rows[better]
            theta[b_rows] = trial[better]
            res[b_rows] = r2[better]
            jac[b_rows] = j2[better]
            sse[b_rows] = s2[better]
            lam[rows] = np.where(better, lam[rows] / 3.0, lam[rows] * 4.0)
            done = (better & (rel < 1e-7)) | (lam[rows] > 1e7)
            active[rows[done]] = False
    return theta, sse


def fit_decay(n: np.ndarray, y_s: np.ndarray, sign: float, gamma: float = 1.0,
              theta0: np.ndarray | None = None, bound_limit_s: np.ndarray | None = None) -> tuple[DecayFit, np.ndarray]:
    """Fit every row of ``y_s`` (devices x points, siemens; NaN = missing) at pulse counts ``n``.

    ``sign`` is -1 for a SET trajectory (rising towards the upper bound) and +1 for
    RESET (falling towards the lower bound).  Returns the fit and the internal
    parameter array (usable as ``theta0`` for a neighbouring gamma).
    """
    n = np.asarray(n, dtype=float)
    y = np.asarray(y_s, dtype=float) / US
    mask = np.isfinite(y)
    lim = None if bound_limit_s is None else np.asarray(bound_limit_s, float) / US
    if theta0 is None:
        theta = _lm(n, y, mask, sign, 1.0, _init_params(n, np.where(mask, y, np.nan), sign), bound_limit=lim)
        theta0 = theta[0]
        if abs(gamma - 1.0) >= 1e-6:  # same initial slope c v0**gamma under the new gamma
            theta0 = theta0.copy()
            theta0[:, 2] += (1.0 - gamma) * theta0[:, 1]
    theta, sse = _lm(n, y, mask, sign, gamma, theta0.copy(), bound_limit=lim)
    ok = np.all(np.isfinite(theta), axis=1) & np.isfinite(sse) & (mask.sum(axis=1) >= 4)
    fit = DecayFit(bound_s=theta[:, 0] * US, v0_s=np.exp(theta[:, 1]) * US, c=np.exp(theta[:, 2]), gamma=gamma,
                   sse=sse, n_points=mask.sum(axis=1), ok=ok)
    return fit, theta


def fit_decay_profile(n: np.ndarray, y_s: np.ndarray, sign: float, gamma_range: tuple[float, float] = (0.3, 4.0),
                      tol: float = 0.01, fixed_gamma: float | None = None,
                      bound_limit_s: np.ndarray | None = None, search_devices: int = 256,
                      gamma_groups: int = 8) -> DecayFit:
    """Per-device fits with the shared gamma that minimises the (trimmed) total squared error.

    ``bound_limit_s``: per-device limit the bound may not pass (see :func:`_lm`), e.g. a level the
    device was seen at: a slow power-law approach is otherwise fitted as a fast approach to a bound
    short of the real one.  The search for gamma uses at most ``search_devices`` devices (evenly
    spaced over the well-fitted ones: the profile of a few hundred devices pins gamma down far
    below its model error); the final fit at the chosen gamma uses every device.  ``gamma_groups``
    disjoint groups of those devices are searched separately for the standard error of gamma.
    """
    base, theta1 = fit_decay(n, y_s, sign, 1.0, bound_limit_s=bound_limit_s)
    if fixed_gamma is not None:
        return (fit_decay(n, y_s, sign, fixed_gamma, bound_limit_s=bound_limit_s)[0] if fixed_gamma != 1.0
                else base)
    y_all = np.asarray(y_s)
    lim_all = None if bound_limit_s is None else np.asarray(bound_limit_s, float)

    def start(g: float, rows: np.ndarray | slice) -> np.ndarray:
        th0 = theta1[rows].copy()
        th0[:, 2] += (1.0 - g) * th0[:, 1]  # same initial slope c v0**gamma under the new gamma
        return th0

    # golden-section searches of the shared gamma, in lockstep (see _search_groups); every step is one fit
    # of all their rows, each row with its group's trial gamma
    groups = _search_groups(base, search_devices, gamma_groups)
    rows = np.concatenate(groups)
    gid = np.repeat(np.arange(len(groups)), [g.size for g in groups])
    y_r = y_all[rows]
    lim_r = None if lim_all is None else lim_all[rows]

    def totals(g_of_group: np.ndarray) -> np.ndarray:
        g_row = g_of_group[gid]
        th0 = theta1[rows].copy()
        th0[:, 2] += (1.0 - g_row) * th0[:, 1]  # same initial slope c v0**gamma under the new gamma
        f, _ = fit_decay(n, y_r, sign, g_row, th0, bound_limit_s=lim_r)
        return (np.bincount(gid, np.where(f.ok, f.sse, 0.0), len(groups))
                + 1e12 * np.bincount(gid, (~f.ok).astype(float), len(groups)))

    n_g = len(groups)
    g_best, f_best = _golden_gamma(totals, n_g, gamma_range, tol)
    # keep gamma = 1 when it is as good as the optimum (within a hair): no spurious curvature
    g_best = np.where(totals(np.ones(n_g)) <= f_best * (1 + 1e-4), 1.0, g_best)
    best = float(g_best[0])
    sigma = float(g_best[1:].std(ddof=1) / np.sqrt(n_g - 1)) if n_g >= 3 else float("nan")
    fit = base if best == 1.0 else fit_decay(n, y_s, sign, best, start(best, slice(None)),
                                             bound_limit_s=bound_limit_s)[0]
    fit.gamma_sigma = sigma
    return fit


def _search_groups(base: DecayFit, search_devices: int, gamma_groups: int) -> list[np.ndarray]:
    """Rows searched for the shared gamma: the searched devices as a whole (group 0) and, for its standard
    error, ``gamma_groups`` disjoint groups of them (batch means: the residuals of a curve are correlated --
    persistent write errors random-walk -- so the profile's curvature would not do)."""
    # devices with a wild gamma=1 fit (outliers) do not steer the shared gamma
    keep = np.flatnonzero(base.ok & (base.sse <= np.nanpercentile(np.where(base.ok, base.sse, np.nan), 98)))
    if keep.size > search_devices:
        keep = keep[np.linspace(0, keep.size - 1, search_devices).round().astype(int)]
    return [keep] + ([g for g in np.array_split(keep, gamma_groups) if g.size >= 4] if gamma_groups >= 2 else [])


def _golden_gamma(totals, n_g: int, gamma_range: tuple[float, float], tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Golden-section searches in ln gamma of ``n_g`` groups in lockstep (``totals``: the groups' errors at
    their trial gammas); returns each group's best gamma and error."""
    a, b = np.full(n_g, np.log(gamma_range[0])), np.full(n_g, np.log(gamma_range[1]))
    phi = (np.sqrt(5.0) - 1.0) / 2.0
    x1, x2 = b - phi * (b - a), a + phi * (b - a)
    f1, f2 = totals(np.exp(x1)), totals(np.exp(x2))
    while np.max(b - a) > tol:
        left = f1 <= f2  # the minimum lies in [a, x2]
        a, b = np.where(left, a, x1), np.where(left, x2, b)
        x_new = np.where(left, b - phi * (b - a), a + phi * (b - a))
        f_new = totals(np.exp(x_new))
        x1, x2, f1, f2 = (np.where(left, x_new, x2), np.where(left, x1, x_new),
                          np.where(left, f_new, f2), np.where(left, f1, f_new))
    return np.exp(np.where(f1 <= f2, x1, x2)), np.minimum(f1, f2)


def discrete_alpha(c: np.ndarray, gamma: float, window_s: np.ndarray, x_ref: float = 0.5) -> np.ndarray:
    """Step coefficient ``alpha`` (siemens) of the pulse law from the continuous-law ``c``.

    ``alpha = c W**gamma`` in the continuous law; per pulse the distance shrinks by
    ``1 - exp(-kappa)`` rather than ``kappa = c v**(gamma-1)`` (exact for gamma = 1),
    evaluated at ``x_ref`` of the window.
    """
    w_us = np.maximum(np.asarray(window_s, dtype=float), 0.0) / US
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        kappa = c * (w_us * (1.0 - x_ref)) ** (gamma - 1.0)
        factor = np.where(kappa > 1e-9, -np.expm1(-kappa) / np.maximum(kappa, 1e-300), 1.0)
        return c * factor * w_us**gamma * US


def weighted_line(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None,
                  through_origin: bool = False) -> tuple[float, float, np.ndarray]:
    """Weighted least squares ``y = a + b x``: returns (a, b, covariance 2x2)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    w = np.ones_like(x) if w is None else np.asarray(w, float)
    if through_origin:
        sxx = float(np.sum(w * x * x))
        b = float(np.sum(w * x * y)) / sxx
        res = y - b * x
        dof = max(x.size - 1, 1)
        s2 = float(np.sum(w * res**2)) / dof
        return 0.0, b, np.array([[0.0, 0.0], [0.0, s2 / sxx]])
    design = np.stack([np.ones_like(x), x], axis=1)
    wd = design * w[:, None]
    cov_unscaled = np.linalg.inv(design.T @ wd)
    a, b = cov_unscaled @ (wd.T @ y)
    res = y - a - b * x
    dof = max(x.size - 2, 1)
    s2 = float(np.sum(w * res**2)) / dof
    return float(a), float(b), cov_unscaled * s2


def nonneg_wls(design: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
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
