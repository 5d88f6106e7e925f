"""The firmware's iterative program-and-verify, vectorised over devices.

Each round reads the devices still being programmed, stops those whose read lies
within the tolerance of the target, and gives the others one pulse batch sized by a
per-device step estimate.  The estimate starts from a nominal fraction of the
conductance window (the firmware does not know a device's true step) and adapts to
the change per pulse it observes.  Because every pulse batch is a write event that
redraws the write offset, a device near its target is effectively re-rolled each
round until a verify read lands inside the tolerance.  Stuck devices never move and
fail to converge unless their stuck value already meets the target.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from firmware_stub.array_model import MemristorArray

NOMINAL_STEP_FRACTION = 0.005  # initial step estimate: 0.5 % of the window (~0.5 uS by default)
STEP_FLOOR_FRACTION = 0.25  # estimate never below / above these multiples of the nominal step
STEP_CEIL_FRACTION = 8.0
ADAPT_RATE = 0.3  # weight of a new observation in the running estimate
ADAPT_FULL_WEIGHT_PULSES = 4  # an observation over fewer pulses is mostly write noise: weigh it less


class WriteVerifyResult(NamedTuple):
    """Per-device ``achieved_s`` (last read), ``converged`` and ``iterations`` (pulse rounds
    received), plus the batch totals ``pulses_total`` and ``energy_j`` (write + verify-read)."""

    achieved_s: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    pulses_total: int
    energy_j: float


def _pulse_counts(err_s: np.ndarray, step_est_s: np.ndarray, n_max: int) -> np.ndarray:
    """``clip(round(err/step), -n_max, n_max)``, never zero (a device outside tolerance gets a pulse)."""
    counts = np.clip(np.rint(err_s / step_est_s), -n_max, n_max).astype(np.int64)
    zero = counts == 0
    counts[zero] = np.where(err_s[zero] > 0, 1, -1)
    return counts


def _adapt(step_est_s: np.ndarray, observed_s: np.ndarray, counts: np.ndarray,
           floor_s: float, ceil_s: float) -> np.ndarray:
    """Running step estimate updated with the observed change per pulse (signed towards the target)."""
    observed = np.clip(observed_s, floor_s, ceil_s)
    rate = ADAPT_RATE * np.minimum(1.0, np.abs(counts) / ADAPT_FULL_WEIGHT_PULSES)
    return (1.0 - rate) * step_est_s + rate * observed


def write_verify(array: MemristorArray, flat_idx, targets_s, tolerance_s: float, max_iter: int,
                 set_profile, reset_profile, *, max_pulses_per_iter: int = 32) -> WriteVerifyResult:
    """Program ``flat_idx`` (sorted unique) towards ``targets_s`` (siemens, scalar or per device).

    At most ``max_iter`` pulse rounds of at most ``max_pulses_per_iter`` pulses per device.
    """
    p = array.params
    idx = np.asarray(flat_idx, dtype=np.int64).reshape(-1)
    targets = np.broadcast_to(np.asarray(targets_s, dtype=np.float64), idx.shape).copy()
    if not tolerance_s > 0 or max_iter < 0 or max_pulses_per_iter < 1:
        raise ValueError("write_verify needs tolerance_s > 0, max_iter >= 0, max_pulses_per_iter >= 1")
    nominal = NOMINAL_STEP_FRACTION * (p.g_max_s - p.g_min_s)
    floor, ceil = STEP_FLOOR_FRACTION * nominal, STEP_CEIL_FRACTION * nominal
    step_est = {+1: np.full(idx.size, nominal), -1: np.full(idx.size, nominal)}
    c = array.counters
    pulses_before, energy_before = c.pulses_total, c.write_energy_j + c.read_energy_j

    achieved = array.read_g(idx)
    done = np.abs(achieved - targets) <= tolerance_s
    iterations = np.zeros(idx.size, dtype=np.int64)
    for _ in range(max_iter):
        todo = np.flatnonzero(~done)
        if todo.size == 0:
            break
        err = targets[todo] - achieved[todo]
        up = err > 0
        est = np.where(up, step_est[+1][todo], step_est[-1][todo])
        counts = _pulse_counts(err, est, max_pulses_per_iter)
        array.apply_pulses(idx[todo], counts, set_profile, reset_profile)
        new = array.read_g(idx[todo])
        observed = (new - achieved[todo]) / counts  # > 0 when the device moved the intended way
        updated = _adapt(est, observed, counts, floor, ceil)
        step_est[+1][todo[up]] = updated[up]
        step_est[-1][todo[~up]] = updated[~up]
        achieved[todo] = new
        iterations[todo] += 1
        done[todo] = np.abs(new - targets[todo]) <= tolerance_s
    c = array.counters
    return WriteVerifyResult(achieved, done, iterations, c.pulses_total - pulses_before,
                             c.write_energy_j + c.read_energy_j - energy_before)
