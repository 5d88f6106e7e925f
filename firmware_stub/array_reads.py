"""Reads and analog vector-matrix products on the emulated array, mixed into
:class:`firmware_stub.array_model.MemristorArray`.

A read sees ``max(G + relax(t), 0) * (1 + read_noise_rel*xi)`` (stuck devices show no
relaxation), with read noise from the array's read stream; reads and VMM book their energy
and advance the virtual clock.
"""

from __future__ import annotations

import numpy as np

from firmware_stub.normal_source import STREAM_READ


class ArrayReadMixin:
    """Reads, VMM and converter bookkeeping of a :class:`MemristorArray` (whose state they read)."""

    def _effective_g(self, g, xi_r, t_w, stuck) -> np.ndarray:
        """Noise-free conductance a read sees now: G + relax(t), G alone if stuck."""
        p = self.params
        log_t = np.log1p((self.clock_sec - t_w) / p.relax_t0_sec)
        relax = (p.relax_sigma0_s + p.relax_sigma1_s * log_t) * xi_r - p.relax_mu_s * log_t
        g_eff = g + relax
        g_eff = np.where(stuck, g, g_eff)
        return np.maximum(g_eff, 0.0, out=g_eff)

    def _frozen(self) -> np.ndarray:
        """Devices whose conductance no pulse moves: stuck, worn out or not yet formed."""
        return self.stuck | self.unformed

    def _state_at(self, sel) -> tuple[np.ndarray, ...]:
        return self.g[sel], self.xi_r[sel], self.t_w[sel], self._frozen()[sel]

    def _region_state(self, row0: int, col0: int, nrows: int, ncols: int) -> tuple[np.ndarray, ...]:
        if not (0 <= row0 and 0 <= col0 and nrows > 0 and ncols > 0
                and row0 + nrows <= self.rows and col0 + ncols <= self.cols):
            raise ValueError(f"region ({row0},{col0}) {nrows}x{ncols} outside the {self.rows}x{self.cols} array")
        block = (slice(row0, row0 + nrows), slice(col0, col0 + ncols))
        return tuple(a.reshape(self.rows, self.cols)[block]
                     for a in (self.g, self.xi_r, self.t_w, self._frozen()))

    def _check_indices(self, flat_idx) -> np.ndarray:
        idx = np.asarray(flat_idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_devices):
            raise ValueError("cell index outside the array")
        return idx

    def true_conductance_s(self, flat_idx) -> np.ndarray:
        """Emulator-only truth: the noise-free conductance a read would see now (no side effects)."""
        return self._effective_g(*self._state_at(self._check_indices(flat_idx)))

    def _read_noisy(self, g_eff: np.ndarray) -> np.ndarray:
        factor = self._noise[STREAM_READ].affine(g_eff.shape, 1.0, self.params.read_noise_rel)
        factor *= g_eff
        return factor

    def _book_read(self, g_eff: np.ndarray, n_rows: int) -> None:
        p = self.params
        self.counters.read_energy_j += p.read_voltage_v**2 * p.t_read_sec * float(g_eff.sum())
        self.counters.cells_read_total += int(g_eff.size)
        self.clock_sec += p.t_command_sec + n_rows * p.t_read_row_sec

    def read_g(self, flat_idx) -> np.ndarray:
        """Read conductances (siemens) of the given cells, in the given order.

        Clock: one command plus one row-read time per distinct row touched.
        """
        idx = self._check_indices(flat_idx)
        g_eff = self._effective_g(*self._state_at(idx))
        out = self._read_noisy(g_eff)
        rows = idx // self.cols
        if rows.size > 1 and np.all(rows[1:] >= rows[:-1]):
            n_rows = 1 + int(np.count_nonzero(rows[1:] != rows[:-1]))
        else:
            n_rows = int(np.unique(rows).size)
        self._book_read(g_eff, n_rows)
        return out

    def read_region(self, row0: int, col0: int, nrows: int, ncols: int) -> np.ndarray:
        """Read a rectangular block; returns an (nrows, ncols) array in siemens."""
        g_eff = self._effective_g(*self._region_state(row0, col0, nrows, ncols))
        out = self._read_noisy(g_eff)
        self._book_read(g_eff, nrows)
        return out

    # ---- VMM -----------------------------------------------------------------------
    def vmm(self, row0: int, col0: int, nrows: int, ncols: int, v, transpose: bool = False) -> np.ndarray:
        """Analog vector-matrix product on a block: currents in amperes.

        ``v`` (volts) has shape (B, nrows) -> output (B, ncols), ``I_j = sum_i V_i G_ij``;
        with ``transpose`` ``v`` is (B, ncols) -> (B, nrows).  A 1-D ``v`` is one vector
        and gives a 1-D result.  Read noise: one fresh draw per cell per call, shared by
        the B vectors of the call.  No DAC/ADC quantisation here (the firmware does it).
        """
        v = np.asarray(v, dtype=np.float64)
        single = v.ndim == 1
        v2 = v[None, :] if single else v
        n_in = ncols if transpose else nrows
        if v2.ndim != 2 or v2.shape[1] != n_in:
            raise ValueError(f"VMM input must have shape (B, {n_in}), got {v.shape}")
        g_eff = self._effective_g(*self._region_state(row0, col0, nrows, ncols))
        g_read = self._read_noisy(g_eff)
        currents = v2 @ (g_read.T if transpose else g_read)
        g_per_input = g_eff.sum(axis=0 if transpose else 1)  # conductance hanging on each driven line
        energy = self.params.t_read_sec * float((v2**2).sum(axis=0) @ g_per_input)
        self._book_vmm(energy, v2.shape[0])
        return currents[0] if single else currents

    def _book_vmm(self, energy_j: float, n_vectors: int) -> None:
        p = self.params
        self.counters.read_energy_j += energy_j
        self.counters.vmm_calls_total += 1
        self.counters.vmm_vectors_total += n_vectors
        self.clock_sec += p.t_command_sec + n_vectors * p.t_vmm_sec

    def account_conversions(self, n: int, dac: int = 0) -> None:
        """Book ``n`` ADC and ``dac`` DAC conversions done by the firmware."""
        self.counters.adc_conversions_total += int(n)
        self.counters.adc_energy_j += int(n) * self.params.adc_energy_j
        self.counters.dac_conversions_total += int(dac)
        self.counters.dac_energy_j += int(dac) * self.params.dac_energy_j
