"""The write-verify policy, shared by the firmware (on its array) and host-side boards (through instruments).

Pure logic over two callables: ``read(idx) -> conductances`` and ``pulse(idx, counts)``.
Each round reads the devices still being programmed, stops those whose read lies
within the tolerance of the target, and gives the others one pulse batch sized by a
per-device, per-polarity step estimate.  The estimate starts from a nominal step
(the programmer does not know a device's true step) and adapts to the change per
pulse it observes.  Because every pulse batch is a write event that redraws the write
offset, a device near its target is effectively re-rolled each round until a verify
read lands inside the tolerance.  Stuck devices never move and do not converge unless
their stuck value already meets the target.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

STEP_FLOOR = 0.25  # estimate never below / above these multiples of the nominal step
STEP_CEIL = 8.0
ADAPT_RATE = 0.3  # weight of a new observation in the running estimate
ADAPT_FULL_WEIGHT_PULSES = 4  # an observation over fewer pulses is mostly write noise: weigh it less


class WriteVerifyOutcome(NamedTuple):
    """Per-device ``achieved_s`` (last read), ``converged`` and ``iterations`` (pulse rounds received)."""

    achieved_s: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray


def pulse_counts(err_s: np.ndarray, step_est_s: np.ndarray, n_max: int) -> np.ndarray:
    """``clip(round(err/step), -n_max, n_max)``, never zero (a device outside tolerance gets a pulse)."""
    counts = np.clip(np.rint(err_s / step_est_s), -n_max, n_max).astype(np.int64)
    zero = counts == 0
    counts[zero] = np.where(err_s[zero] > 0, 1, -1)
    return counts


def adapt(step_est_s: np.ndarray, observed_s: np.ndarray, counts: np.ndarray, nominal_s: float) -> np.ndarray:
    """Running step estimate updated with the observed change per pulse (signed towards the target)."""
    observed = np.clip(observed_s, STEP_FLOOR * nominal_s, STEP_CEIL * nominal_s)
    rate = ADAPT_RATE * np.minimum(1.0, np.abs(counts) / ADAPT_FULL_WEIGHT_PULSES)
    return (1.0 - rate) * step_est_s + rate * observed


def write_verify_loop(read: Callable[[np.ndarray], np.ndarray], pulse: Callable[[np.ndarray, np.ndarray], None],
                      n_devices: int, targets_s: np.ndarray, tolerance_s: float, max_iter: int,
                      nominal_step_s: float, max_pulses_per_round: int) -> WriteVerifyOutcome:
    """Program devices ``0..n_devices-1`` (positions handed to ``read``/``pulse``) towards ``targets_s``."""
    if not tolerance_s > 0 or max_iter < 0 or max_pulses_per_round < 1 or not nominal_step_s > 0:
        raise ValueError("write-verify needs tolerance_s > 0, max_iter >= 0, max_pulses_per_round >= 1 "
                         "and a positive nominal step")
    targets = np.broadcast_to(np.asarray(targets_s, dtype=np.float64), (n_devices,))
    step_est = {+1: np.full(n_devices, nominal_step_s), -1: np.full(n_devices, nominal_step_s)}
    everyone = np.arange(n_devices)
    achieved = np.array(read(everyone), dtype=np.float64)
    done = np.abs(achieved - targets) <= tolerance_s
    iterations = np.zeros(n_devices, dtype=np.int64)
    for _ in range(max_iter):
        todo = np.flatnonzero(~done)
        if todo.size == 0:
            break
        err = targets[todo] - achieved[todo]
        up = err > 0
        est = np.where(up, step_est[+1][todo], step_est[-1][todo])
        counts = pulse_counts(err, est, max_pulses_per_round)
        pulse(todo, counts)
        new = read(todo)
        updated = adapt(est, (new - achieved[todo]) / counts, counts, nominal_step_s)
        step_est[+1][todo[up]] = updated[up]
        step_est[-1][todo[~up]] = updated[~up]
        achieved[todo] = new
        iterations[todo] += 1
        done[todo] = np.abs(new - targets[todo]) <= tolerance_s
    return WriteVerifyOutcome(achieved, done, iterations)
