"""Forming pulses and DC sweeps on the emulated array (characterization), mixed into
:class:`firmware_stub.array_model.MemristorArray`.

Both are write events like a pulse batch (write error, fresh relaxation draw, counters, clock)
and reuse the array's write-event and read helpers.
"""

from __future__ import annotations

import numpy as np

from firmware_stub.pulse_energy import pulse_scale, write_periphery_energy_j


class ArrayDcMixin:
    """Forming and DC current-voltage sweeps of a :class:`MemristorArray` (whose state they change)."""

    def form(self, flat_idx, voltage_v: float, width_sec: float, compliance_a: float) -> np.ndarray:
        """A forming pulse on each device; returns the mask of devices formed by it.

        An unformed device whose forming voltage is reached forms: its filament grows
        until the current meets the compliance, leaving ``G = compliance / V`` (inside
        its window).  Formed devices see a compliance-limited strong SET.  Energy is
        ``V * I * width`` per device with the current at most the compliance.
        """
        p = self.params
        idx = self._check_indices(flat_idx)
        g_cc = np.clip(compliance_a / voltage_v, p.g_min_s, self.g_max[idx])
        newly = self.unformed[idx] & (voltage_v >= self.v_form[idx])
        formed_before = ~self.unformed[idx] & ~self.stuck[idx]
        g_before = self.g[idx].copy()
        g_after = g_before.copy()
        g_after[newly] = g_cc[newly]
        strong = formed_before & (voltage_v > p.v_set_threshold_v)
        g_after[strong] = np.maximum(g_before[strong], g_cc[strong])
        self.g[idx] = g_after
        self.unformed[idx[newly]] = False
        touched = idx[newly | strong]
        self._redraw_write_event(touched)
        self.n_pulses[idx] += 1
        current = np.minimum(np.maximum(g_before, g_after) * voltage_v, compliance_a)
        self._book_write_energy(float(voltage_v * width_sec * current.sum()),
                                write_periphery_energy_j(p, idx.size, [(voltage_v, idx.size)]))
        self.counters.pulses_total += int(idx.size)
        self.counters.set_pulses_total += int(idx.size)
        self.counters.write_events_total += int(touched.size)
        self.clock_sec += p.t_command_sec + width_sec
        self.refresh_derived()
        return newly

    def iv_sweep(self, flat_idx, voltages_v, dwell_sec: float, compliance_a: float) -> np.ndarray:
        """DC staircase on each device: returns currents (n_devices, n_steps), amps.

        Each step holds its voltage for ``dwell_sec``.  A step beyond a switching threshold
        counts as ``n = pulse_scale(V, dwell_sec)`` nominal pulses, applied in the
        continuous limit of the soft-bounds law (``1-x -> (1-x)*exp(-n*alpha/window)``
        for SET, ``x -> x*exp(-n*alpha/window)`` for RESET) -- a DC step is many small
        pulses, not one huge one.  The compliance caps a SET at ``compliance / V``; an
        unformed device forms once its forming voltage is reached.  The current is the
        read conductance times V, clipped at the compliance.  Loops over voltage steps
        only, vectorised over devices.
        """
        p = self.params
        idx = self._check_indices(flat_idx)
        volts = np.asarray(voltages_v, dtype=np.float64).reshape(-1)
        out = np.empty((idx.size, volts.size))
        for k, v in enumerate(volts):
            if v > 0 and self.unformed[idx].any():
                self.form(idx[self.unformed[idx]], float(v), dwell_sec, compliance_a)
            n_equiv = pulse_scale(p, float(v), dwell_sec) if v != 0 else 0.0
            movable = idx[~self._frozen()[idx]]
            if n_equiv > 0 and movable.size:
                lo, hi = p.g_min_s, self.g_max[movable]
                window = hi - lo
                x = np.clip((self.g[movable] - lo) / window, 0.0, 1.0)
                if v > 0:
                    x = 1.0 - (1.0 - x) * np.exp(-n_equiv * self.alpha_set[movable] / window)
                    g = np.minimum(lo + x * window, max(compliance_a / v, lo))
                else:
                    x = x * np.exp(-n_equiv * self.alpha_reset[movable] / window)
                    g = lo + x * window
                self.g[movable] = g
                self._redraw_write_event(movable)
                self.n_pulses[movable] += 1
                self.counters.write_events_total += int(movable.size)
            g_eff = self._effective_g(*self._state_at(idx))
            out[:, k] = np.clip(self._read_noisy(g_eff) * v, -compliance_a, compliance_a)
            energy = float(np.abs(out[:, k]).sum() * abs(v) * dwell_sec)
            if n_equiv > 0:
                self._book_write_energy(energy)
            else:
                self.counters.read_energy_j += energy
            self.clock_sec += p.t_command_sec + dwell_sec
        return out
