"""Write-noise moment fit: the rows (per-device variance and lag-1 covariance statistics), the
non-negative weighted fit of ``(sigma_w^2, sigma_r0^2, sigma_rel^2)``, its bootstrap over devices and
the Birge ratio that widens it.

:mod:`calibration.write_noise_analysis` computes each change's residual given its pre-event state and
the designs (``k = 1 + (pol + beta)^2``, ``q``) into its cells; this module turns them into rows and
fits them (the model and why it is built so are that module's docstring).

Errors.  The bootstrap over devices redoes the whole fit on each resample, the designs resampled
with their devices: the fit's error *under the fitted model*.  Where the rows scatter about the model
by more than their own (correlated) errors allow -- ``chi^2 / dof > 1`` against the full covariance of
the rows' device means -- something the model leaves out (the state correction's approximations,
the path factor's linearisation about the mean path, a device population that the moment model
describes only on average) adds error of the same order, and the replicates' spread is widened by
the Birge ratio ``sqrt(chi^2 / dof)`` (as for a weighted mean of inconsistent data; never narrowed).
Over the 50 sets of ``tests/test_calibration_property.py`` (about 15 degrees of freedom) the ratio
ran from 0.71 to 1.38, median 1.00: about what chi^2 gives for a model that holds, with a slightly
long upper tail; it widened the errors of half of the sets, by at most 38 %.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibration.common import bootstrap_indices
from calibration.fits import nonneg_wls


def lag1_coef(cell_of: dict, t: int) -> np.ndarray:
    """``a_t``: the covariance of the residuals of events t and t+1 is ``a_t (sigma_r0^2 + read var of y[t+1])``.

    The read after event t carries its relaxation offset (and read noise) with weight ``pol_t`` in
    event t's change and ``-(pol_{t+1} + beta_{t+1})`` in event t+1's residual.
    """
    c0, _ = cell_of[t]
    c1, _ = cell_of[t + 1]
    return -c0["pol"] * (c1["pol"] + c1["beta"])


@dataclass(frozen=True)
class Rows:
    """Rows of the moment fit: per-device statistics (rows, devices), their designs (rows, 3, devices) in
    (sigma_w^2, sigma_r0^2, sigma_rel^2), and what each row is (("var" | "lag1"), n, polarity)."""

    y: np.ndarray
    x: np.ndarray
    kind: list[tuple[str, int, int]]


def moment_rows(cells: list[dict], beta_of: dict, read_var: np.ndarray, n_arr: np.ndarray, pol_arr: np.ndarray,
                pulse_counts: tuple[int, ...]) -> Rows:
    """The residual variance of every cell, and the lag-1 covariance of successive events (from differences
    of same-cell events two apart, which cancel each device's cell means); ``read_var``: variance of every
    averaged read, (events+1, devices)."""
    rows_y, rows_x, row_kind = [], [], []
    for c in cells:
        rows_y.append(c["v"] - c["rv"])
        rows_x.append(np.stack([np.ones_like(c["k"]), c["k"], c["q"]]))
        row_kind.append(("var", c["n"], c["pol"]))
    n_dev_all = read_var.shape[1]
    for n in pulse_counts:
        # only where the state correction is small: an error in beta would leak c2c and write noise in
        block = [t for t in range(1, len(n_arr)) if n_arr[t] == n and t in beta_of]
        if len(block) < 4 or max(float(np.mean(np.abs(beta_of[t][0]["beta"]))) for t in block) > 0.15:
            continue
        for parity in (0, 1):
            prods, xs = _lag1_products(block, parity, beta_of, read_var)
            if prods:
                zeros = np.zeros(n_dev_all)
                rows_y.append(np.mean(prods, axis=0))
                rows_x.append(np.stack([zeros, np.mean(xs, axis=0), zeros]))
                row_kind.append(("lag1", n, int(pol_arr[block[parity]])))
    return Rows(np.stack(rows_y), np.stack(rows_x), row_kind)


def _lag1_products(block: list[int], parity: int, beta_of: dict, read_var: np.ndarray) -> tuple[list, list]:
    """Products of differences of same-cell events two apart, read-noise part removed, and their coefficients."""
    prods, xs = [], []
    for k in range(parity, len(block) - 3, 2):
        t0, t1, t2, t3 = block[k:k + 4]
        if t3 - t0 != 3:
            continue
        r0, r1, r2, r3 = (beta_of[t][0]["res"][beta_of[t][1]] for t in (t0, t1, t2, t3))
        a01, a12, a23 = (lag1_coef(beta_of, t) for t in (t0, t1, t2))
        prods.append((r2 - r0) * (r3 - r1) - (a01 * read_var[t1] + a23 * read_var[t3] - a12 * read_var[t2]))
        xs.append(a01 + a23 - a12)
    return prods, xs


@dataclass(frozen=True)
class MomentFit:
    """The fitted variances and the bootstrap replicates of their square roots."""

    values: np.ndarray  # (sigma_w^2, sigma_r0^2, sigma_rel^2)
    boot: np.ndarray  # (n_boot, 3) replicates of (sigma_w, sigma_r0, sigma_rel), widened by the Birge ratio
    birge: float = 1.0  # sqrt(chi^2 / dof) of the fit (:func:`birge_ratio`)

    @property
    def s(self) -> float:
        return float(np.sqrt(self.values[0]))

    @property
    def s_r0(self) -> float:
        return float(np.sqrt(self.values[1]))

    @property
    def sig_rel(self) -> float:
        return float(np.sqrt(self.values[2]))

    @property
    def s_sig(self) -> float:
        return float(np.std(self.boot[:, 0], ddof=1))

    @property
    def r0_sig(self) -> float:
        return float(np.std(self.boot[:, 1], ddof=1))

    @property
    def r_sig(self) -> float:
        return float(np.std(self.boot[:, 2], ddof=1))


def moment_fit(rows: Rows, rng: np.random.Generator, n_boot: int) -> MomentFit:
    """Non-negative weighted fit of the device means of the rows, and its bootstrap over devices."""
    ry, rx = rows.y, rows.x
    n_used = ry.shape[1]
    row_var = np.maximum(ry.var(axis=1, ddof=1) / n_used, 1e-300)  # variance of each row's mean
    weights = 1.0 / row_var

    def fit(counts: np.ndarray | None) -> np.ndarray:
        """(sigma_w^2, sigma_r0^2, sigma_rel^2) from the device means (bootstrap: weighted by ``counts``)."""
        if counts is None:
            yy, xx = ry.mean(axis=1), rx.mean(axis=2)
        else:
            yy, xx = ry @ counts / n_used, rx @ counts / n_used
        return nonneg_wls(xx, yy, weights)

    values = fit(None)
    boot = bootstrap_indices(rng, n_used, n_boot)
    counts = np.stack([np.bincount(b, minlength=n_used) for b in boot]).astype(float)
    boot = np.sqrt(np.array([fit(cnt) for cnt in counts]))
    birge = birge_ratio(rows, values)
    # the replicates' spread about their mean widened by the Birge ratio (see birge_ratio), so that
    # everything that reads them (the reported errors, the threshold's bootstrap) carries the misfit
    return MomentFit(values, boot.mean(axis=0) + max(birge, 1.0) * (boot - boot.mean(axis=0)), birge)


def birge_ratio(rows: Rows, values: np.ndarray) -> float:
    """``sqrt(chi^2 / dof)`` of the moment fit: its residuals against the full covariance of the rows' device
    means (the rows share devices and events, so they are correlated; estimated over the devices).

    The bootstrap over devices gives the fit's error *under the fitted model*; where the rows scatter
    about it more than their own errors allow (chi^2 / dof > 1), something the model leaves out (the
    state correction's approximations, the path factor's linearisation, a device population that the
    moment model describes only on average) adds error of the same order, and the errors are widened
    by this ratio (the Birge ratio, as in a weighted mean of inconsistent data; see the module doc for
    what it was over the property test's sets).  ``dof``: rows less the coefficients the fit left free
    (a coefficient held at 0 by the non-negativity constraint is not fitted).
    """
    ry, rx = rows.y, rows.x
    n_used = ry.shape[1]
    cov = np.atleast_2d(np.cov(ry)) / n_used
    resid = ry.mean(axis=1) - rx.mean(axis=2) @ values
    dof = resid.size - int(np.count_nonzero(values > 0))
    if dof < 1 or not np.all(np.isfinite(cov)):
        return 1.0
    chi2 = float(resid @ np.linalg.lstsq(cov, resid, rcond=None)[0])
    return float(np.sqrt(max(chi2, 0.0) / dof))


def lag1_summary(rows: Rows) -> list[dict]:
    return [{"n": kind[1], "first_polarity": "set" if kind[2] > 0 else "reset", "value_s2": float(rows.y[i].mean()),
             "coef": float(rows.x[i, 1].mean())} for i, kind in enumerate(rows.kind) if kind[0] == "lag1"]
