"""DC work through the SMU on the VISA bench -- I-V sweeps and forming, one device at a time --, mixed
into :class:`drivers.visa_bench.VisaBenchBoard`.

Each level lasts one SMU reading, so a level's duration must be an integration the 2450 can make
(0.01..10 power-line cycles); anything else is refused before a byte is sent.
"""

from __future__ import annotations

import numpy as np

from drivers.errors import BoardError, LimitViolation
from drivers.visa_bench_setup import LINE_FREQUENCY_HZ, SMU_NPLC_RANGE, quiet


class BenchDcMixin:
    """I-V sweeps and forming of a :class:`VisaBenchBoard` through its SMU and matrix."""

    def check_dc_duration(self, seconds: float, what: str) -> None:
        self._dwell_nplc(seconds, what)

    @staticmethod
    def _dwell_nplc(seconds: float, what: str) -> float:
        """The SMU's integration (NPLC) that holds a level for ``seconds``; refused outside 0.01..10 PLC."""
        nplc = seconds * LINE_FREQUENCY_HZ
        lo, hi = SMU_NPLC_RANGE
        if not lo * (1 - 1e-9) <= nplc <= hi * (1 + 1e-9):
            raise LimitViolation(
                f"the SMU holds each {what} level for one reading of {lo:g}..{hi:g} power-line cycles, "
                f"{lo / LINE_FREQUENCY_HZ:g}..{hi / LINE_FREQUENCY_HZ:g} s at {LINE_FREQUENCY_HZ:g} Hz; "
                f"{seconds:g} s is outside: choose a {what} time in that range")
        return float(min(max(nplc, lo), hi))

    def _smu_dc(self, flat: np.ndarray, volts: np.ndarray, nplc: float, compliance_a: float,
                what: str) -> np.ndarray:
        """Each device alone on the SMU: compliance set and read back with the output off, output on,
        ``volts`` in turn (one reading each), output off before the matrix re-routes; currents (A)."""
        smu, matrix = self.smu, self.matrix
        w = self.config.wiring
        dwell_sec = nplc / LINE_FREQUENCY_HZ
        out = np.full((flat.size, volts.size), np.nan)
        with self._operation(what):
            self._smu_armed = False
            self._smu_dc_config = True  # until the read configuration is restored
            try:
                smu.configure_dc(compliance_a=compliance_a, max_level_v=float(np.max(np.abs(volts))), nplc=nplc)
                for k, f in enumerate(flat.tolist()):
                    r, c = divmod(f, self._cols)
                    matrix.route(self._channels(r, c, w.smu_hi, w.smu_lo))
                    smu.source_voltage = 0.0
                    smu.output_enabled = True
                    try:
                        for j, v in enumerate(volts.tolist()):
                            i = smu.read_at(v)
                            out[k, j] = float(np.clip(i, -compliance_a, compliance_a))
                            self._totals["read_energy"] += abs(v * out[k, j]) * dwell_sec
                    finally:
                        smu.output_off(confirm=True)
                        smu.source_voltage = 0.0
                    if smu.error_count:
                        smu.check_errors(f"during the {what} of cell ({r}, {c})")
            except BoardError as exc:
                exc.partial = out  # type: ignore[attr-defined]
                raise
            finally:
                quiet(lambda: smu.output_off(confirm=True))
                quiet(lambda: matrix.open_all(confirm=True))
            self._restore_read()
        return out

    def _restore_read(self) -> None:
        """Back to the bench file's read configuration (fixed range, NPLC, auto zero) after DC work."""
        c = self.config
        self.smu.current_autozero = True
        self.smu.configure_read(voltage_v=self._v_read, current_range_a=c.smu.current_range_a,
                                compliance_a=self._compliance_a, nplc=c.smu.nplc,
                                off_mode=c.smu.output_off_mode, terminals=c.smu.terminals)
        self._smu_armed = True
        self._smu_dc_config = False

    def _do_iv_sweep(self, flat: np.ndarray, volts: np.ndarray, dwell_sec: float, compliance_a: float) -> np.ndarray:
        nplc = self._dwell_nplc(dwell_sec, "sweep step")
        return self._smu_dc(flat, volts, nplc, compliance_a, "I-V sweep")

    def _do_form(self, flat: np.ndarray, voltage_v: float, width_sec: float, compliance_a: float):
        """A forming level held by the SMU for ``width_sec`` under compliance; a device counts as formed
        when its current reaches the compliance (the filament's jump), and is then read back."""
        nplc = self._dwell_nplc(width_sec, "forming")
        i = self._smu_dc(flat, np.array([voltage_v]), nplc, compliance_a, "forming")[:, 0]
        formed = np.abs(i) >= compliance_a * (1 - 1e-3)
        return formed, self._read_flat(flat)
