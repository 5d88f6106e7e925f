"""The firmware's PROGRAM command: the shared write-verify policy of :mod:`protocols.write_verify` run on the
array model (this module adapts the model to the policy; the policy itself is defined once, in ``protocols``)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from firmware_stub.array_model import MemristorArray
from protocols.write_verify import write_verify_loop

NOMINAL_STEP_FRACTION = 0.005  # initial step estimate: 0.5 % of the window (~0.5 uS by default)


class WriteVerifyResult(NamedTuple):
    """Per-device ``achieved_s`` (last read), ``converged`` and ``iterations`` (pulse rounds
    received), plus the batch totals ``pulses_total`` and ``energy_j`` (write + verify-read)."""

    achieved_s: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    pulses_total: int
    energy_j: float


def write_verify(array: MemristorArray, flat_idx, targets_s, tolerance_s: float, max_iter: int,
                 set_profile, reset_profile, *, max_pulses_per_iter: int = 32) -> WriteVerifyResult:
    """Program ``flat_idx`` (sorted unique) towards ``targets_s`` (siemens, scalar or per device).

    At most ``max_iter`` pulse rounds of at most ``max_pulses_per_iter`` pulses per device.
    """
    p = array.params
    idx = np.asarray(flat_idx, dtype=np.int64).reshape(-1)
    c = array.counters
    pulses_before, energy_before = c.pulses_total, c.write_energy_j + c.read_energy_j
    out = write_verify_loop(
        read=lambda pos: array.read_g(idx[pos]),
        pulse=lambda pos, counts: array.apply_pulses(idx[pos], counts, set_profile, reset_profile),
        n_devices=idx.size, targets_s=targets_s, tolerance_s=tolerance_s, max_iter=max_iter,
        nominal_step_s=NOMINAL_STEP_FRACTION * (p.g_max_s - p.g_min_s), max_pulses_per_round=max_pulses_per_iter,
    )
    c = array.counters
    return WriteVerifyResult(*out, c.pulses_total - pulses_before, c.write_energy_j + c.read_energy_j - energy_before)
