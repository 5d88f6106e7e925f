"""The VISA bench as a Board: a Keithley 2450 SMU, a Keysight 33500B pulse generator and a
Keithley 707B switch matrix wired to a crossbar array, described by a bench file.

How each operation is done (honestly, one device at a time -- this board is slow by
nature: two to four instrument round trips per cell read or per device pulsed, plus
the instruments' own time):

* **read**: for each cell the matrix closes exactly SMU HI -> the cell's word line and
  SMU LO -> its bit line (``channel.exclusiveclose`` + read-back of the closed
  crosspoints and the error count in the same exchange), then the SMU turns its
  output on, takes one ``:READ?`` at the read voltage under the current limit, turns
  the output off and reports its error count.  ``G = I / V``.  Relays therefore never
  switch under voltage (``hot_switching = true`` in the bench file keeps the output on
  during a read sweep instead: faster, harder on the relays).
* **pulse**: per polarity the generator is set once to the profile (level, width,
  period) and its output turned on (idling at 0 V); then for each device the matrix
  routes generator HI -> word line, LO -> bit line for SET (reversed for RESET, so the
  device sees a negative pulse), and ``*TRG`` fires a burst of ``|count|`` pulses;
  ``*OPC?`` waits for it and the error queue is read.  Output off after each phase,
  all crosspoints open after each operation.  A device with a partial last pulse
  (``PulseBatch.last_pulse_width_sec``) gets, while routed, its full-width burst and then
  one pulse at its own width; devices are grouped by width so the generator's width is
  rewritten only when it changes.  The generator's 20 ns minimum makes partial pulses
  shorter than that impossible here (the ``bp`` rule rounds them, unbiased, to 0 or
  20 ns); and the emulated bench counts each burst as a write event, so a device with
  whole pulses AND a partial one gets two write events there (one on the FPGA board).
* **program** (write-verify) runs on the host on top of read and pulse.
* **I-V sweep and forming** go through the SMU, one device at a time: with the output
  off, the SMU is set to a voltage source at 0 V on the range of the largest level, the
  requested compliance as its current limit (read back and compared), current auto
  range, auto zero off and an integration of ``dwell_sec`` (or the forming width) -- so
  each level lasts one reading, 200 us .. 200 ms at 50 Hz, anything else is refused
  before a byte is sent; then the matrix routes the device, the output turns on, each
  level is set and read, and the output turns off before the next route.  A formed
  device is one whose current reached the compliance.  The read configuration is
  restored afterwards.
* **VMM** is not offered (``capabilities.vmm`` is false).

Limits: the board's hardware limits are what the bench file's ``[limits]`` states the
bench (probe card, wiring, devices) tolerates -- the device-safe
:data:`~drivers.limits.DEVICE_SAFE_LIMITS` for every field it does not state --
tightened by the instruments' ratings (:data:`drivers.visa_bench_setup.INSTRUMENT_LIMITS`); a user limits
file can only tighten them further (:func:`~drivers.limits.effective_limits`).  The read
voltage and compliance of the bench file are checked before any instrument is
opened; profiles, pulse counts and read voltages before any command of an operation
is sent (the :class:`~drivers.board.Board` template methods); the generator's own
voltage limits (``VOLT:LIM``) are set as a second line of defence.

Clock: without a virtual clock, ``clock()`` is host monotonic time since the board
was opened and ``wait()`` sleeps.  An emulated bench (``emulated = true``) whose file
declares ``virtual_clock = true`` asks the emulators instead: every instrument
emulator advances the shared array's clock by the real duration of what it does
(integration time, relay settling, burst length, command latency), ``clock()`` reads
it with the vendor query ``:EMULation:CLOCk?`` and ``wait(s)`` sends
``:EMULation:WAIT s``, so an hour of retention takes milliseconds.  A real
instrument answers those vendor commands with ``-113 Undefined header``; the board
checks at open that an emulated bench really is one.

Failures: a lost link (:class:`~drivers.errors.LinkError`, a timeout
:class:`~drivers.errors.BoardTimeout`) or an instrument error
(:class:`~drivers.errors.InstrumentError`) stops the operation; before the error
propagates the board turns the generator and SMU outputs off and opens the matrix
(reconnecting to an instrument whose link dropped, once), and attaches what was
done so far to the exception (``exc.partial``: the conductances read, NaN where not
read; or the :class:`~drivers.board.PulseReport` of the bursts that completed without
error, with ``exc.in_flight = (row, col, signed count)`` naming the device whose burst
was under way, or None).  Ctrl-C gets the same treatment, and leaving the ``with``
block puts the bench in safe idle.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from drivers.bench_file import BenchFile, load_bench_file
from drivers.board import Board, BoardInfo, BoardStatus, Capabilities, Region
from drivers.errors import BoardError, BoardTimeout, InstrumentError, LimitViolation
from drivers.instruments.keithley707b import Keithley707B
from drivers.instruments.keithley2450 import Keithley2450
from drivers.instruments.keysight33500b import Keysight33500B
from drivers.instruments.scpi_property import VisaInstrument
from drivers.limits import (
    SafetyLimits,
    check_compliance,
    check_read_voltage,
    effective_limits,
)
from drivers.visa_bench_dc import BenchDcMixin
from drivers.visa_bench_pulses import BenchPulsesMixin
from drivers.visa_bench_setup import (
    LINE_FREQUENCY_HZ,
    bench_hardware_limits,
    open_resource_manager,
    pick_current_range,
    quiet,
    shutdown_instrument,
)

log = logging.getLogger(__name__)

class VisaBenchBoard(BenchPulsesMixin, BenchDcMixin, Board):
    """A Board made of bench instruments over pyvisa; see the module docstring.

    Pulses and write-verify (:mod:`drivers.visa_bench_pulses`) and DC work through the SMU
    (:mod:`drivers.visa_bench_dc`) are mixed in from their own modules.
    """

    def __init__(self, config: BenchFile, limits: SafetyLimits | None = None, *, resource_manager: Any = None,
                 path: str | Path | None = None, address: str | None = None):
        super().__init__(limits, address=address if address is not None else (f"visa:{path}" if path else ""))
        self.config = config
        self.path = Path(path) if path else None
        self._hw_limits = bench_hardware_limits(config, path)
        self._effective = effective_limits(self._user_limits, self._hw_limits,
                                           hardware_label="the bench's hardware limits")
        self._compliance_a = self._check_settings()
        b = config.bench
        self._rows, self._cols = b.rows, b.cols
        self._v_read = config.smu.read_voltage_v
        self._t_int = config.smu.nplc / LINE_FREQUENCY_HZ
        self._t0 = time.monotonic()
        n = b.rows * b.cols
        self._g_last = np.full(n, np.nan)
        self._pulses_per_device = np.zeros(n, dtype=np.int64)
        self._totals = {"pulses": 0, "set": 0, "reset": 0, "write_events": 0, "write_energy": 0.0,
                        "read_energy": 0.0, "cells_read": 0}
        self._compliance_warned = False
        self._smu_armed = False
        self._smu_dc_config = False
        self._last_tag = 0
        self._own_rm = resource_manager is None
        self._rm = resource_manager
        self.smu: Keithley2450 | None = None
        self.generator: Keysight33500B | None = None
        self.matrix: Keithley707B | None = None
        try:
            if self._rm is None:
                self._rm = open_resource_manager(b.visa_library)
            self._open_instruments()
            self._configure()
            self._info = self._build_info()
        except BaseException:
            self._abort_open()
            raise

    # ---- opening -----------------------------------------------------------------------------------
    def _check_settings(self) -> float:
        """Bench-file settings against the effective limits, before anything is opened."""
        lim = self.limits
        check_read_voltage(self.config.smu.read_voltage_v, lim)
        asked = self.config.smu.compliance_a
        if asked is not None:
            try:
                asked = check_compliance(asked, lim)
            except LimitViolation:
                raise LimitViolation(f"the bench file asks for a {asked:g} A compliance; the effective limit is "
                                     f"{lim.compliance_a:g} A (compliance_a)") from None
        compliance = asked if asked is not None else lim.compliance_a
        if compliance < 1e-9:
            raise LimitViolation(f"a compliance of {compliance:g} A is below the SMU's 1 nA minimum")
        return min(compliance, 1.05)

    def _open_instruments(self) -> None:
        c, t = self.config, self.config.bench.timeout_sec
        self.matrix = Keithley707B.open(self._rm, c.switch_matrix.resource, timeout_sec=t)
        self.smu = Keithley2450.open(self._rm, c.smu.resource, timeout_sec=t)
        self.generator = Keysight33500B.open(self._rm, c.pulse_generator.resource, timeout_sec=t,
                                             channel=c.pulse_generator.channel)

    def _configure(self) -> None:
        c = self.config
        # relays open first, so nothing is connected while the sources are set up
        self.matrix.clear_status()
        self.matrix.configure()
        for inst in (self.smu, self.generator):
            inst.clear_status()
            inst.reset()
        self.generator.configure_pulser(limit_high_v=max(self.limits.max_set_v, self.limits.max_reset_v),
                                        edge_time_sec=c.pulse_generator.edge_time_sec)
        self.smu.configure_read(voltage_v=self._v_read, current_range_a=c.smu.current_range_a,
                                compliance_a=self._compliance_a, nplc=c.smu.nplc,
                                off_mode=c.smu.output_off_mode, terminals=c.smu.terminals)
        self._smu_armed = True
        if c.bench.emulated:
            try:
                self.smu.query_number(":EMUL:CLOC?")
                ok = self.smu.error_count == 0
            except (BoardTimeout, InstrumentError):  # a real instrument does not answer an undefined query
                ok = False
            if not ok:
                raise InstrumentError(
                    f"the bench file declares an emulated bench, but the SMU at {c.smu.resource} does not "
                    "answer the emulator's :EMULation:CLOCk? query: set emulated = false for real instruments")

    def _abort_open(self) -> None:
        for inst in (self.generator, self.smu, self.matrix):
            if inst is None:
                continue
            try:
                inst.shutdown()
            except Exception:
                pass
            inst.close()
        if self._own_rm and self._rm is not None:
            try:
                self._rm.close()
            except Exception:
                pass
        self._closed = True

    def _build_info(self) -> BoardInfo:
        c = self.config
        ids = [i.identity for i in (self.smu, self.generator, self.matrix)]
        rng = pick_current_range(c.smu.current_range_a)
        full_scale_a = self._full_scale_a = min(rng * 1.05, self._compliance_a)
        return BoardInfo(
            kind="visa",
            name=f"{c.bench.name}: {' + '.join(f'{i.manufacturer} {i.model}'.strip() for i in ids)}",
            serial_number="/".join(i.serial_number for i in ids),
            firmware_version="/".join(i.firmware for i in ids),
            protocol_version=0,
            rows=self._rows,
            cols=self._cols,
            capabilities=Capabilities(vmm=False, vmm_transpose=False, write_verify=True,
                                      virtual_clock=c.bench.virtual_clock, true_parameters=c.bench.emulated,
                                      iv_sweep=True, forming=True, partial_pulses=True),
            hardware_limits=self._hw_limits,
            read_voltage_v=self._v_read,
            g_lsb_s=rng * 1e-6 / self._v_read,
            g_full_scale_s=full_scale_a / self._v_read,
            timing_resolution_sec=1e-10,
            emulated=c.bench.emulated,
        )

    @classmethod
    def from_file(cls, path: str | Path, limits: SafetyLimits | None = None, **kw: Any) -> "VisaBenchBoard":
        return cls(load_bench_file(path), limits, path=path, **kw)

    # ---- identity ------------------------------------------------------------------------------------
    @property
    def info(self) -> BoardInfo:
        return self._info

    @property
    def instruments(self) -> dict[str, VisaInstrument]:
        return {"smu": self.smu, "pulse_generator": self.generator, "switch_matrix": self.matrix}

    def _instrument_settings(self) -> dict[str, Any]:
        """Identity and every readable setting of the SMU, generator and matrix (queried now), plus the
        matrix's closed crosspoints and the bench file's settings."""
        out: dict[str, Any] = {}
        for role, inst in self.instruments.items():
            if inst is not None:
                out[role] = inst.settings()
        if self.matrix is not None:
            out["switch_matrix"]["parameters"]["closed_channels"] = sorted(self.matrix.closed_channels())
        out["bench_file"] = {"path": str(self.path) if self.path else None,
                             **self.config.model_dump(mode="json", include={"bench", "smu", "pulse_generator"})}
        return out

    @property
    def wire_bytes(self) -> int:
        return sum(i.bytes_tx + i.bytes_rx for i in self.instruments.values() if i is not None)

    # ---- routing --------------------------------------------------------------------------------------
    def _channels(self, row: int, col: int, hi: str, lo: str, reverse: bool = False) -> list[str]:
        w = self.config.wiring
        wl, bl = w.word_lines[row], w.bit_lines[col]
        if reverse:
            wl, bl = bl, wl
        return [w.channel(hi, wl), w.channel(lo, bl)]

    # ---- failure handling --------------------------------------------------------------------------------
    @contextmanager
    def _operation(self, what: str) -> Iterator[None]:
        """On any failure (Ctrl-C included): outputs off and relays open, then re-raise."""
        try:
            yield
        except BaseException as exc:
            log.warning("%s interrupted by %s: %s; putting the bench in safe idle", what, type(exc).__name__, exc)
            self._emergency_idle()
            raise

    def _emergency_idle(self) -> None:
        self._smu_armed = False  # shutdown zeroes the SMU's source level: re-arm before the next read
        for inst in (self.generator, self.smu, self.matrix):
            if inst is None:
                continue
            try:
                shutdown_instrument(inst)
            except BaseException as exc:  # keep going: the other instruments must still be idled
                log.error("could not put the %s in safe idle: %s", inst.label, exc)

    # ---- Board hooks: reads ---------------------------------------------------------------------
    def _read_flat(self, flat: np.ndarray) -> np.ndarray:
        smu, matrix = self.smu, self.matrix
        w = self.config.wiring
        hot = self.config.smu.hot_switching
        out = np.full(flat.size, np.nan)
        with self._operation("read"):
            try:
                if self._smu_dc_config:  # an interrupted sweep or forming left its DC settings
                    self._restore_read()
                if not self._smu_armed:  # a safe idle left the source at 0 V (output off): back to the read level
                    smu.source_voltage = float(self._v_read)
                    smu.check_errors("after restoring the read voltage")
                    self._smu_armed = True
                if hot:
                    smu.output_enabled = True
                for k, f in enumerate(flat.tolist()):
                    r, c = divmod(f, self._cols)
                    matrix.route(self._channels(r, c, w.smu_hi, w.smu_lo))
                    current = smu.read_current(switch_output=not hot)
                    if abs(current) >= self._full_scale_a * (1 - 1e-6):
                        current = math.copysign(self._full_scale_a, current)  # saturates like an ADC
                        if not self._compliance_warned:
                            self._compliance_warned = True
                            log.warning("cell (%d, %d) reads at the %.3g A full scale (range or compliance): "
                                        "its conductance is clipped to %.3g S", r, c, self._full_scale_a,
                                        self._full_scale_a / self._v_read)
                    out[k] = current / self._v_read
                    self._totals["cells_read"] += 1
                    self._totals["read_energy"] += self._v_read**2 * abs(out[k]) * self._t_int
            except BoardError as exc:
                exc.partial = out  # type: ignore[attr-defined]
                raise
            finally:
                if hot:
                    quiet(lambda: smu.output_off(confirm=True))
                quiet(lambda: matrix.open_all(confirm=True))
        self._g_last[flat] = out
        return out

    def _do_read_region(self, region: Region) -> np.ndarray:
        rows = np.arange(region.row0, region.row0 + region.rows)
        cols = np.arange(region.col0, region.col0 + region.cols)
        flat = (rows[:, None] * self._cols + cols[None, :]).ravel()
        try:
            return self._read_flat(flat).reshape(region.rows, region.cols)
        except BoardError as exc:
            if isinstance(getattr(exc, "partial", None), np.ndarray):
                exc.partial = exc.partial.reshape(region.rows, region.cols)  # type: ignore[attr-defined]
            raise

    def _do_read_cells(self, flat_sorted: np.ndarray) -> np.ndarray:
        return self._read_flat(np.asarray(flat_sorted, dtype=np.int64))

    # ---- clock -----------------------------------------------------------------------------------------------------
    def _do_clock(self) -> float:
        if self.config.bench.virtual_clock:
            return self.smu.query_number(":EMUL:CLOC?")
        return time.monotonic() - self._t0

    def _do_wait(self, seconds: float) -> float:
        if self.config.bench.virtual_clock:
            self.smu.write(f":EMUL:WAIT {seconds:.9e}")
            if self.smu.error_count:
                self.smu.check_errors("on :EMULation:WAIT")
        else:
            time.sleep(seconds)
        return self._do_clock()

    # ---- status, truth, idle ---------------------------------------------------------------------------------------
    def _do_status(self, with_digest: bool = False) -> BoardStatus:
        t = self._totals
        digest = None
        if with_digest and self.config.bench.emulated:
            digest = json.loads(self.smu.query(":EMUL:STAT? DIG")).get("state_digest")
        return BoardStatus(
            clock_sec=self._do_clock(), pulses_total=t["pulses"], set_pulses_total=t["set"],
            reset_pulses_total=t["reset"], write_events_total=t["write_events"], write_energy_j=t["write_energy"],
            write_device_energy_j=t["write_energy"], read_energy_j=t["read_energy"], adc_energy_j=0.0, cells_read_total=t["cells_read"], vmm_calls_total=0,
            max_pulses_per_device=int(self._pulses_per_device.max(initial=0)), state_digest=digest,
            last_pulse_tag=self._last_tag,
        )

    def status(self, with_digest: bool = False) -> BoardStatus:
        """Host-side running totals (write energy estimated from the last read of each device)."""
        return self._do_status(with_digest)

    def _do_true_parameters(self) -> dict[str, Any]:
        return json.loads(self.smu.query(":EMUL:TRUT?"))

    def _do_safe_idle(self) -> None:
        self._smu_armed = False  # shutdown zeroes the SMU's source level: re-arm before the next read
        first: BaseException | None = None
        for inst in (self.generator, self.smu, self.matrix):
            if inst is None:
                continue
            try:
                shutdown_instrument(inst)
            except BaseException as exc:  # Ctrl-C included: the other instruments must still be idled
                log.error("safe idle of the %s failed: %s", inst.label, exc)
                first = first or exc
        if first is not None:
            raise first

    def _do_close(self) -> None:
        for inst in (self.generator, self.smu, self.matrix):
            if inst is not None:
                inst.close()
        if self._own_rm and self._rm is not None:
            try:
                self._rm.close()
            except Exception as exc:
                log.debug("closing the VISA resource manager: %s", exc)


