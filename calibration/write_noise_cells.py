"""The classic per-cell view of the write-noise events: pooled figures per (pulse count, polarity) and the
straight line ``var(n) = offset + n sigma_abs^2`` through them, per polarity.

Kept beside the moment fit (:mod:`calibration.write_noise_moments`, which gives the reported figures) for the
plots and for people who read the textbook picture; nothing reported is computed here.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from calibration.fits import weighted_line
from calibration.write_noise_moments import Rows


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


def cell_stats(cells: list[dict], rows: Rows, usable: np.ndarray, sr2: float) -> list[CellStats]:
    """One :class:`CellStats` per cell (``cells``: the analysis' per-cell arrays; ``rows``: its moment rows;
    ``usable``: the devices that entered the fit; ``sr2``: the fitted ``sigma_r0^2``)."""
    stats = []
    for i, c in enumerate(cells):
        vm = float(rows.y[i].mean())
        km, qm = float(rows.x[i, 1].mean()), float(rows.x[i, 2].mean())
        stats.append(CellStats(n=c["n"], polarity="set" if c["pol"] > 0 else "reset",
                               var_raw_s2=float(c["raw"][usable].mean()), var_read_s2=float(c["rv"][usable].mean()),
                               var_wander_s2=float(c["raw"][usable].mean() - c["v"][usable].mean()),
                               var_s2=vm + (2.0 - km) * sr2, q_s2=qm, mean_change_s=float(c["m"][usable].mean()),
                               beta=float(c["beta"][usable].mean())))
    return stats


def classic_fits(stats: list[CellStats]) -> dict[str, dict[str, float]]:
    """Per polarity, the straight line ``var(n) = offset + n sigma_abs^2`` through the cells' corrected variances."""
    by_pol = {}
    for pol in ("set", "reset"):
        ns = np.array([c.n for c in stats if c.polarity == pol], float)
        vv = np.array([c.var_s2 for c in stats if c.polarity == pol])
        a, b, _ = weighted_line(ns, vv, 1.0 / np.maximum(vv, 1e-30) ** 2)
        by_pol[pol] = {"offset_var_s2": a, "slope_s2": b, "sigma_abs_s": float(np.sqrt(max(b, 0.0)))}
    return by_pol
