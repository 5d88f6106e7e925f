"""Read noise: repeated reads of a device sample -> relative read noise.

A random sample of devices is read ``n_reads`` times without any write in
between.  With ``G_read = G (1 + s*xi)`` each read scatters by ``s G`` plus the
converter's quantisation (variance ``lsb^2/12``).  The per-device variance is taken
from *second differences*, ``mean((r[k+1] - 2 r[k] + r[k-1])^2) / 6``: a device keeps
relaxing while it is read (on a bench whose reads take milliseconds that is a
visible drift, fastest right after a write), and second differences cancel its
local slope where the plain variance would count it as noise.  The estimate gives every device the same
weight, ``s^2 = mean_i((var_i - q) / mean_i^2)``, over devices that read well above
the converter's resolution (a ratio of sums would let the few devices stuck at the
top of the window dominate).  Its uncertainty comes from a bootstrap over devices.
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
    quantisation_var,
    read_repeated,
    stage_rng,
)
from drivers.board import Board

STAGE = "read_noise"
FLOOR_LSB = 50  # devices reading below 50 LSB are left out (relative noise of ~0 S is meaningless)


class ReadNoiseParams(ProcedureParams):
    n_devices: int = Field(1024, ge=2, description="devices in the sample")
    n_reads: int = Field(16, ge=3, le=10_000, description="reads of each device")
    n_boot: int = Field(200, ge=10, description="bootstrap resamples for the uncertainty")


class ReadNoiseResult(BaseModel):
    read_noise_rel: float = Field(description="relative read noise (1 sigma) of one read")
    read_noise_rel_sigma: float = Field(description="one-sigma uncertainty of read_noise_rel")
    mean_g_s: float = Field(description="mean conductance of the sample during the reads")
    quantisation_s: float = Field(description="sqrt(lsb^2/12) of one read, subtracted")
    n_used: int = Field(description="devices that read above the floor and entered the estimate")
    sample: SampleInfo


def relative_variances(reads: np.ndarray, q_var: float = 0.0, floor_s: float = 0.0) -> np.ndarray:
    """Per-device ``(var - q) / mean^2`` from reads of shape (n_reads, n); NaN where mean <= floor.

    ``var`` is a sixth of the mean squared second difference of successive reads (insensitive
    to a drift that is locally linear); with fewer than three reads, half the squared first difference.
    """
    mean = reads.mean(axis=0)
    if reads.shape[0] >= 3:
        curv = np.diff(reads, n=2, axis=0)
        var = np.mean(curv * curv, axis=0) / 6.0
    else:
        steps = np.diff(reads, axis=0)
        var = 0.5 * np.mean(steps * steps, axis=0)
    ok = mean > floor_s
    return np.where(ok, (var - q_var) / np.where(ok, mean, 1.0) ** 2, np.nan)


def estimate_read_noise(reads: np.ndarray, q_var: float = 0.0, floor_s: float = 0.0) -> float:
    """Relative read noise (equal weight per device) from reads of shape (n_reads, n)."""
    rel = relative_variances(reads, q_var, floor_s)
    rel = rel[np.isfinite(rel)]
    return float(np.sqrt(max(float(rel.mean()), 0.0))) if rel.size else float("nan")


def measure_read_noise(board: Board, params: ReadNoiseParams | None = None,
                       progress: Progress = None) -> Measured:
    """Read a random device sample ``n_reads`` times; returns the relative read noise."""
    params = params or ReadNoiseParams()
    rng = stage_rng(params.seed, STAGE)
    flat = choose_devices(board, params.n_devices, rng, what="the read-noise sample")
    reads = read_repeated(board, flat, params.n_reads)
    if progress:
        progress(1.0)
    q = quantisation_var(board)
    rel = relative_variances(reads, q, floor_s=FLOOR_LSB * board.info.g_lsb_s)
    used = np.isfinite(rel)
    if used.sum() < 2:
        raise ValueError("read noise: fewer than two sampled devices read above the converter floor")
    rel = rel[used]
    s = float(np.sqrt(max(float(rel.mean()), 0.0)))
    idx = bootstrap_indices(rng, rel.size, params.n_boot)
    boot = np.sqrt(np.maximum(rel[idx].mean(axis=1), 0.0))
    result = ReadNoiseResult(read_noise_rel=s, read_noise_rel_sigma=float(boot.std(ddof=1)),
                             mean_g_s=float(reads.mean()), quantisation_s=float(np.sqrt(q)),
                             n_used=int(used.sum()),
                             sample=SampleInfo.from_counts(np.zeros(flat.size, dtype=np.int64),
                                                           "uniform random over the whole array"))
    raw = Raw()
    raw.add("devices", flat, "flat index (row*cols+col)")
    raw.add("reads", reads, "S")
    return Measured(result, raw)
