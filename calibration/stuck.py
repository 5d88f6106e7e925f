"""Stuck / unresponsive device map over the whole array.

Every device gets one write event of ``n_pulses`` SET pulses and then one of
``n_pulses`` RESET pulses; the whole array is read ``n_reads`` times before,
between and after.  A device that responds moves up during the SET event (unless
it already sits at its upper bound) or down during the RESET event (a device near
its upper bound moves most there), so it is *responsive* when

    up   = Y1 - Y0 > z * sd_up     or     down = Y1 - Y2 > z * sd_down

where ``sd`` is the read-noise standard deviation of the difference of two
averaged reads (relative read noise estimated from the same reads, plus the
converter's quantisation).  Everything else is stuck; a stuck device reading above
the middle of the observed range is reported as stuck high.  Thresholds count
only movement in the pulsed direction, so a stuck device that merely shows noise
is not mistaken for a working one.
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
    pulse_devices,
    quantisation_var,
    read_array_repeated,
)
from calibration.read_noise import FLOOR_LSB, relative_variances
from drivers.board import Board

STAGE = "stuck_map"


class StuckParams(ProcedureParams):
    n_pulses: int = Field(128, ge=1, description="pulses of the SET and of the RESET write event")
    n_reads: int = Field(4, ge=2, description="reads of the array averaged at each of the three points")
    z_threshold: float = Field(8.0, gt=0, description="movement, in read-noise sigmas, that counts as a response")


class StuckResult(BaseModel):
    stuck_fraction: float
    stuck_fraction_sigma: float = Field(description="binomial one-sigma uncertainty as a process estimate")
    n_stuck: int
    n_stuck_high: int
    n_stuck_low: int
    n_devices: int
    read_noise_rel: float = Field(description="relative read noise seen in this stage's reads")
    median_response_s: float = Field(description="median of max(up, down) over responsive devices")
    sample: SampleInfo


def map_stuck(board: Board, params: StuckParams | None = None, progress: Progress = None) -> Measured:
    """Pulse every device up and down once; devices that do not move beyond read noise are stuck."""
    params = params or StuckParams()
    info = board.info
    n_all = info.rows * info.cols
    flat = np.arange(n_all, dtype=np.int64)
    r = params.n_reads

    reads0 = read_array_repeated(board, r)
    pulse_devices(board, flat, +params.n_pulses, split=True)
    reads1 = read_array_repeated(board, r)
    if progress:
        progress(0.5)
    pulse_devices(board, flat, -params.n_pulses, split=True)
    reads2 = read_array_repeated(board, r)
    if progress:
        progress(0.5)

    q = quantisation_var(board)
    # relative read noise from the repeated reads themselves (the three groups pooled)
    floor = FLOOR_LSB * info.g_lsb_s
    rel = np.concatenate([relative_variances(g.reshape(r, -1), q, floor) for g in (reads0, reads1, reads2)])
    s_rel = float(np.sqrt(max(float(np.nanmean(rel)), 0.0)))
    y0, y1, y2 = (x.mean(axis=0) for x in (reads0, reads1, reads2))

    def sd(a, b):
        return np.sqrt((s_rel**2 * (a**2 + b**2) + 2 * q) / r)

    up, down = y1 - y0, y1 - y2
    z_up, z_down = up / sd(y0, y1), down / sd(y1, y2)
    responsive = (z_up > params.z_threshold) | (z_down > params.z_threshold)
    stuck = ~responsive
    level = np.maximum(y0, y2)
    lo, hi = np.percentile(level, [0.1, 99.9])
    stuck_high = stuck & (level > 0.5 * (lo + hi))
    p = float(stuck.mean())
    resp = np.maximum(up, down)[responsive]
    result = StuckResult(
        stuck_fraction=p, stuck_fraction_sigma=float(np.sqrt(max(p * (1 - p), 1.0 / n_all) / n_all)),
        n_stuck=int(stuck.sum()), n_stuck_high=int(stuck_high.sum()), n_stuck_low=int((stuck & ~stuck_high).sum()),
        n_devices=n_all, read_noise_rel=s_rel,
        median_response_s=float(np.median(resp)) if resp.size else 0.0,
        sample=SampleInfo.from_counts(np.full(n_all, 2 * params.n_pulses), "every device of the array",
                                      write_events=2 * -(-params.n_pulses // board.limits.max_pulses_per_device)),
    )
    raw = Raw()
    raw.add("g_before", y0, "S")
    raw.add("g_after_set", y1, "S")
    raw.add("g_after_reset", y2, "S")
    raw.add("z_up", z_up, "1")
    raw.add("z_down", z_down, "1")
    raw.add("stuck", stuck, "bool")
    raw.add("stuck_high", stuck_high, "bool")
    return Measured(result, raw)
