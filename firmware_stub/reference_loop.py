"""The pulse physics of :class:`MemristorArray` as a plain per-cell Python loop.

This is the honest baseline that ``hil bench`` times the vectorised model against
(``emulator_speedup_vs_loop``), and a test oracle: it re-implements soft-bounds steps,
cycle-to-cycle noise, clipping, stuck devices, wear, energy and the write event
(persistent write error, relaxation redraw) independently, with scalar ``math`` and one scalar random draw per pulse, so
that the two engines can be compared statistically (not bitwise: the draw order differs).
Only validation, batch duration and counter/clock booking are shared with the model.
"""

from __future__ import annotations

import math

import numpy as np

from firmware_stub.array_model import MemristorArray
from firmware_stub.pulse_energy import (
    PulseOutcome,
    check_profile_polarity,
    pulse_scale,
    write_periphery_energy_j,
)


def _worn_upper_bound_s(array: MemristorArray, i: int, pulse_number: int) -> float:
    """Upper bound of device i at its pulse number ``pulse_number`` (see the wear law)."""
    p = array.params
    g_max = float(array.g_max[i])
    frac = min(max((pulse_number - p.endurance_pulses) / p.endurance_pulses, 0.0), 1.0)
    return g_max - p.wear_window_loss * frac * (g_max - p.g_min_s)


def _one_pulse(array: MemristorArray, i: int, polarity: int, amplitude_v: float, width_sec: float,
               scale: float, rng: np.random.Generator) -> float:
    """Apply one pulse to device i; returns its energy."""
    p = array.params
    pulse_number = int(array.n_pulses[i]) + 1
    array.n_pulses[i] = pulse_number
    g = float(array.g[i])
    if not array.stuck[i]:
        hi = _worn_upper_bound_s(array, i, pulse_number)
        g = min(g, hi)
        window = max(hi - p.g_min_s, 1e-9 * (p.g_max_s - p.g_min_s))
        x = (g - p.g_min_s) / window
        xi = rng.standard_normal()
        if polarity > 0:
            step = float(array.alpha_set[i]) * scale * math.pow(1.0 - x, p.gamma_set) * (1.0 + p.sigma_c2c * xi)
        else:
            step = -float(array.alpha_reset[i]) * scale * math.pow(x, p.gamma_reset) * (1.0 + p.sigma_c2c * xi)
        g_after = min(max(g + step, p.g_min_s), hi)
        if pulse_number >= 2 * p.endurance_pulses:
            array.stuck[i] = True
    else:
        g_after = g
    array.g[i] = g_after
    return amplitude_v * amplitude_v * (g + g_after) / 2.0 * width_sec


def apply_pulses_loop(array: MemristorArray, flat_idx, counts, set_profile, reset_profile,
                      last_width_sec=None) -> PulseOutcome:
    """Same contract and physics as :meth:`MemristorArray.apply_pulses`, one cell at a time."""
    idx, counts = array.validate_pulse_batch(flat_idx, counts)
    last_w = [None] * idx.size if last_width_sec is None else np.asarray(last_width_sec, float).tolist()
    v_set, w_set = check_profile_polarity(set_profile, +1)
    v_reset, w_reset = check_profile_polarity(reset_profile, -1)
    rng_pulse, rng_write = array.rng("pulse"), array.rng("write")
    energy, n_set, n_reset = 0.0, 0, 0
    for i, c, lw in zip(idx.tolist(), counts.tolist(), last_w):
        v, w, pol = (v_set, w_set, +1) if c > 0 else (v_reset, w_reset, -1)
        for k in range(abs(c)):
            w_k = lw if (lw is not None and k == abs(c) - 1) else w  # the last pulse may be a partial one
            energy += _one_pulse(array, i, pol, v, w_k, pulse_scale(array.params, v, w_k), rng_pulse)
        if c > 0:
            n_set += c
        else:
            n_reset -= c
    array.refresh_derived()  # devices may have worn out
    periphery = write_periphery_energy_j(array.params, idx.size, [(v_set, n_set), (v_reset, n_reset)])
    outcome = PulseOutcome(n_set, n_reset, energy + periphery,
                           array.write_batch_duration_sec(counts, w_set, w_reset, last_width_sec), periphery)
    array.book_write_batch(outcome, idx.size)
    p = array.params
    for i in idx.tolist():
        error = p.sigma_w_s * rng_write.standard_normal()  # persistent: lands in G, once per event
        if not (array.stuck[i] or array.unformed[i]):
            hi = _worn_upper_bound_s(array, i, int(array.n_pulses[i]))
            array.g[i] = min(max(float(array.g[i]) + error, p.g_min_s), max(hi, p.g_min_s))
        array.xi_r[i] = rng_write.standard_normal()
        array.t_w[i] = array.clock_sec
    return outcome
