"""The Board contract: what calibration and the host training loop may ask of any test board.

Three implementations stand behind it: the serial FPGA controller
(:mod:`drivers.fpga`), the VISA bench (:mod:`drivers.visa_bench`) and the in-process
emulator (an FPGA board whose link is a function call into ``firmware_stub``).

The public methods here are template methods: they validate shapes and check every
voltage-bearing request against the effective :class:`SafetyLimits` *before* the
subclass's ``_do_*`` hook runs, so no implementation can send an unchecked request.
A board is a context manager; leaving the ``with`` block by any path (return,
exception, Ctrl-C) puts the hardware in a safe idle state and closes the link.

One index convention: above this contract a device is ``(row, col)``, zero-based, given
as two integer arrays (``read_cells``, ``program``, ``form``, ``iv_sweep``, ``PulseBatch``)
or as a ``Region``; below it (the ``_do_*`` hooks, the wire) a device is its row-major
flat index ``row * info.cols + col``, computed here once, sorted and unique where the
hook's name says ``flat_sorted``.

One module of about 460 lines on purpose: the contract is one class of template methods (its
records are in :mod:`drivers.board_types`), read top to bottom as the list of what a board does.
"""

from __future__ import annotations

import abc
import logging
from typing import Any

import numpy as np

from drivers.board_types import (
    BoardInfo,
    BoardStatus,
    Capabilities,
    FormReport,
    Pending,
    ProgramReport,
    PulseBatch,
    PulseReport,
    Region,
)
from drivers.errors import BoardError, LimitViolation
from drivers.limits import (
    DEFAULT_RESET,
    DEFAULT_SET,
    EffectiveLimits,
    PulseProfile,
    SafetyLimits,
    check_compliance,
    check_duration,
    check_form_voltage,
    check_profile,
    check_pulse_counts,
    check_pulse_widths,
    check_read_voltage,
    check_sweep_voltages,
    effective_limits,
    exceeds,
)

__all__ = ["Board", "BoardInfo", "BoardStatus", "Capabilities", "FormReport", "Pending", "ProgramReport",
           "PulseBatch", "PulseReport", "Region"]

log = logging.getLogger(__name__)


class Board(abc.ABC):
    """Abstract test board.  Subclasses implement the ``_do_*`` hooks."""

    def __init__(self, limits: SafetyLimits | None = None, *, address: str = ""):
        self._address = address
        self._user_limits = limits or SafetyLimits()
        self._effective: EffectiveLimits | None = None
        self._profiles: tuple[PulseProfile, PulseProfile] = (DEFAULT_SET, DEFAULT_RESET)
        self._closed = False

    # ---- identity -------------------------------------------------------------
    @property
    @abc.abstractmethod
    def info(self) -> BoardInfo: ...

    @property
    def address(self) -> str:
        """The address the board was opened with (:func:`drivers.address.open_board`'s argument, options
        included); '' for a board constructed directly without one."""
        return self._address

    @property
    def limits(self) -> SafetyLimits:
        """Effective limits: the stricter of the user's and the hardware's in every field."""
        return self.effective_limits.limits

    @property
    def effective_limits(self) -> EffectiveLimits:
        """The effective limits with, per field, which side set them (and the user values refused).

        Implementations resolve this when they open (:meth:`_resolve_limits`), so that a user
        limits file that conflicts with the hardware fails at open, before any operation.
        """
        if self._effective is None:
            self._resolve_limits()
        return self._effective

    def _resolve_limits(self) -> None:
        """Tighten the user's limits with the hardware's; :class:`LimitConflict` if they cannot both hold."""
        self._effective = effective_limits(self._user_limits, self.info.hardware_limits)

    @property
    def profiles(self) -> tuple[PulseProfile, PulseProfile]:
        """The current (SET, RESET) pulse profiles."""
        return self._profiles

    @property
    def wire_bytes(self) -> int:
        """Bytes sent plus received on the link since the board was opened."""
        return 0

    # ---- operations (checked) -------------------------------------------------
    def set_profiles(self, set_profile: PulseProfile, reset_profile: PulseProfile) -> None:
        """Set the pulse used for each polarity; both are checked against the limits first."""
        set_profile = check_profile(set_profile, +1, self.limits)
        reset_profile = check_profile(reset_profile, -1, self.limits)
        self._do_set_profiles(set_profile, reset_profile)
        self._profiles = (set_profile, reset_profile)

    def read(self, region: Region | None = None) -> np.ndarray:
        """Conductance (S) of every cell of ``region`` (default: whole array), shape (rows, cols)."""
        region = region or Region(0, 0, self.info.rows, self.info.cols)
        region.check_within(self.info.rows, self.info.cols)
        check_read_voltage(self.info.read_voltage_v, self.limits)
        return self._do_read_region(region)

    def read_cells(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Conductance (S) of the listed cells, in the order given (repeats allowed)."""
        rows, cols = self._check_cells(rows, cols)
        check_read_voltage(self.info.read_voltage_v, self.limits)
        if rows.size == 0:
            return np.zeros(0)
        flat = rows * self.info.cols + cols
        uniq, inverse = np.unique(flat, return_inverse=True)
        return self._do_read_cells(uniq)[inverse]

    def vmm(
        self,
        region: Region,
        v: np.ndarray,
        transpose: bool = False,
        i_full_scale_a: float | None = None,
    ) -> np.ndarray:
        """Analog vector-matrix product on ``region``.

        ``v`` has shape (batch, region.rows) -- or (batch, region.cols) with
        ``transpose`` -- in volts; returns currents (A) of shape (batch, region.cols)
        -- or (batch, region.rows).  ``i_full_scale_a`` selects the ADC range; by
        default the largest current the region can produce at the given inputs.
        """
        info = self.info
        if not info.capabilities.vmm or (transpose and not info.capabilities.vmm_transpose):
            raise BoardError(
                f"this board ({info.kind}) does not offer {'transposed ' if transpose else ''}VMM; "
                "read the weights and compute on the host instead"
            )
        region.check_within(info.rows, info.cols)
        v = np.atleast_2d(np.asarray(v, dtype=float))
        n_in = region.cols if transpose else region.rows
        if v.shape[1] != n_in:
            raise BoardError(f"VMM input has {v.shape[1]} entries per vector; the region needs {n_in}")
        check_read_voltage(v, self.limits)
        if exceeds(np.max(np.abs(v), initial=0.0), info.dac_full_scale_v):
            raise LimitViolation(
                f"VMM input of {np.max(np.abs(v)):.3f} V exceeds the DAC full scale of {info.dac_full_scale_v:.3f} V"
            )
        if i_full_scale_a is None:
            i_full_scale_a = float(np.max(np.sum(np.abs(v), axis=1))) * info.g_full_scale_s / 4
        lo, hi = info.adc_full_scale_a
        i_full_scale_a = float(np.clip(i_full_scale_a, lo, hi))  # a measurement range: it drives nothing
        return self._do_vmm(region, v, transpose, i_full_scale_a)

    def pulse(self, batch: PulseBatch, tag: int = 0) -> PulseReport:
        """Apply a sparse batch of SET/RESET pulses with the current profiles.

        A non-zero ``tag`` is remembered by the board (``status().last_pulse_tag``), so a
        host resuming from a write-ahead log can tell whether its last batch was applied.
        """
        checked = self._checked_pulse(batch, tag)
        return self._empty_pulse_report() if checked is None else self._do_pulse(*checked)

    def pulse_async(self, batch: PulseBatch, tag: int = 0) -> Pending[PulseReport]:
        """Send a pulse batch without waiting for its report, where the board pipelines requests.

        Checked exactly like :meth:`pulse` (a refused batch raises here and sends nothing).  The
        board executes requests in the order they were sent, so every later read, VMM or pulse
        sees this batch applied; meanwhile the host goes on (the next forward VMM overlaps the
        batch's round trip).  A failure is raised by ``result()``, or, if nobody asks, by the
        board's next call that waits for a reply.  A board that does not pipeline applies the
        batch before returning.
        """
        checked = self._checked_pulse(batch, tag)
        if checked is None:
            return Pending(self._empty_pulse_report())
        return self._do_pulse_async(*checked)

    def _empty_pulse_report(self) -> PulseReport:
        return PulseReport(devices=0, set_pulses=0, reset_pulses=0, energy_j=0.0, duration_sec=0.0,
                           clock_sec=self.clock())

    def _checked_pulse(self, batch: PulseBatch, tag: int) -> tuple | None:
        """The ``_do_pulse`` arguments of a batch checked against the limits; None for an empty batch."""
        if len(batch) == 0:
            return None
        rows, cols = self._check_cells(batch.rows, batch.cols)
        counts = np.asarray(batch.counts, dtype=np.int64)
        if counts.shape != rows.shape:
            raise BoardError("pulse batch rows, cols and counts must have the same length")
        if np.any(counts == 0):
            raise BoardError("pulse batch holds devices with a zero pulse count; leave them out")
        flat = rows * self.info.cols + cols
        if np.unique(flat).size != flat.size:
            raise BoardError("pulse batch names a device more than once; merge its counts first")
        check_pulse_counts(counts, self.limits)
        for p, pol in zip(self._profiles, (+1, -1)):
            check_profile(p, pol, self.limits)
        widths = self._check_last_widths(batch, counts)
        if not 0 <= tag < 2**63:
            raise BoardError("pulse tag must be in [0, 2**63)")
        order = np.argsort(flat, kind="stable")
        return flat[order], counts[order], tag, None if widths is None else widths[order]

    def _do_pulse_async(self, flat_sorted: np.ndarray, counts: np.ndarray, tag: int,
                        last_width_sec: np.ndarray | None = None) -> Pending[PulseReport]:
        """A pipelining board overrides this; by default the batch is applied before returning."""
        return Pending(self._do_pulse(flat_sorted, counts, tag, last_width_sec))

    def application_order(self, batch: PulseBatch) -> np.ndarray:
        """Positions (into ``batch``) of its devices in the order :meth:`pulse` applies them.

        A host that died in the middle of a batch can only have left a prefix of this order
        applied.  A board that applies a batch as one event (the FPGA board) returns the
        identity order; the VISA bench pulses device by device.
        """
        rows, cols = self._check_cells(batch.rows, batch.cols)
        counts = np.asarray(batch.counts, dtype=np.int64)
        widths = self._check_last_widths(batch, counts)
        flat = rows * self.info.cols + cols
        by_flat = np.argsort(flat, kind="stable")
        return by_flat[self._do_application_order(counts[by_flat], None if widths is None else widths[by_flat])]

    def _do_application_order(self, counts_sorted: np.ndarray, last_width_sec: np.ndarray | None) -> np.ndarray:
        """The order of a checked batch sorted by flat index (positions into it); default: as sorted."""
        return np.arange(counts_sorted.size)

    def _check_last_widths(self, batch: PulseBatch, counts: np.ndarray) -> np.ndarray | None:
        """The batch's last-pulse widths (s), checked against the limits and the profiles; None if all full."""
        if batch.last_pulse_width_sec is None:
            return None
        widths = np.asarray(batch.last_pulse_width_sec, dtype=float).reshape(-1)
        if widths.shape != counts.shape:
            raise BoardError("pulse batch last_pulse_width_sec must have one entry per device")
        profile_w = np.where(counts > 0, self._profiles[0].width_sec, self._profiles[1].width_sec)
        check_pulse_widths(widths, profile_w, self.limits)
        if np.all(widths >= profile_w):
            return None
        return widths

    def program(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        targets_s: np.ndarray,
        tolerance_s: float,
        max_iter: int = 20,
    ) -> ProgramReport:
        """Write-verify: pulse each device until its read conductance is within ``tolerance_s`` of target."""
        rows, cols = self._check_cells(rows, cols)
        targets_s = np.asarray(targets_s, dtype=float).reshape(-1)
        if targets_s.shape != rows.shape:
            raise BoardError("program: targets must have one entry per device")
        if not np.all(np.isfinite(targets_s)) or np.any(targets_s < 0) or np.any(targets_s > self.info.g_full_scale_s):
            raise BoardError(
                f"program: targets must lie in [0, {self.info.g_full_scale_s:.3g}] S (the read full scale)"
            )
        if not tolerance_s > 0:
            raise BoardError("program: tolerance_s must be positive")
        if not 1 <= max_iter <= 1000:
            raise BoardError("program: max_iter must be between 1 and 1000")
        flat = rows * self.info.cols + cols
        if np.unique(flat).size != flat.size:
            raise BoardError("program names a device more than once")
        for p, pol in zip(self._profiles, (+1, -1)):
            check_profile(p, pol, self.limits)
        if rows.size == 0:
            z = np.zeros(0)
            return ProgramReport(z, z.astype(bool), z.astype(int), 0, 0.0)
        return self._do_program(flat, targets_s, float(tolerance_s), int(max_iter))

    def form(self, rows: np.ndarray, cols: np.ndarray, voltage_v: float, width_sec: float,
             compliance_a: float) -> "FormReport":
        """A forming pulse on each listed device under current compliance."""
        if not self.info.capabilities.forming:
            raise BoardError(f"this board ({self.info.kind}) cannot apply forming pulses")
        rows, cols = self._check_cells(rows, cols)
        lim = self.limits
        voltage_v = check_form_voltage(voltage_v, lim)
        width_sec = check_duration(width_sec, lim, "forming pulse width")
        self.check_dc_duration(width_sec, "forming")
        compliance_a = check_compliance(compliance_a, lim)
        flat = rows * self.info.cols + cols
        uniq, inverse = np.unique(flat, return_inverse=True)
        formed, g = self._do_form(uniq, float(voltage_v), float(width_sec), float(compliance_a))
        return FormReport(formed[inverse], g[inverse])

    def iv_sweep(self, rows: np.ndarray, cols: np.ndarray, voltages_v: np.ndarray, dwell_sec: float,
                 compliance_a: float) -> np.ndarray:
        """A DC voltage staircase on each listed device; currents (A), shape (devices, steps)."""
        if not self.info.capabilities.iv_sweep:
            raise BoardError(f"this board ({self.info.kind}) cannot run I-V sweeps")
        rows, cols = self._check_cells(rows, cols)
        lim = self.limits
        volts = check_sweep_voltages(np.asarray(voltages_v, dtype=float).reshape(-1), lim)
        dwell_sec = check_duration(dwell_sec, lim, "sweep step duration")
        self.check_dc_duration(dwell_sec, "sweep step")
        compliance_a = check_compliance(compliance_a, lim)
        flat = rows * self.info.cols + cols
        uniq, inverse = np.unique(flat, return_inverse=True)
        return self._do_iv_sweep(uniq, volts, float(dwell_sec), float(compliance_a))[inverse]

    def check_dc_duration(self, seconds: float, what: str) -> None:
        """Raise unless this board can hold one DC level (a forming pulse, a sweep step) for ``seconds``.

        Procedures call it before their first request; boards whose DC levels come from an
        instrument with a limited integration time (the VISA bench's SMU) override it.
        """

    def _do_form(self, flat: np.ndarray, voltage_v: float, width_sec: float, compliance_a: float):
        raise BoardError("forming is not implemented by this board")

    def _do_iv_sweep(self, flat: np.ndarray, volts: np.ndarray, dwell_sec: float, compliance_a: float) -> np.ndarray:
        raise BoardError("I-V sweeps are not implemented by this board")

    def clock(self) -> float:
        """The board clock in seconds (virtual on the emulator)."""
        return self._do_clock()

    def wait(self, seconds: float) -> float:
        """Let ``seconds`` pass on the board clock; returns the clock afterwards."""
        if not seconds >= 0:
            raise BoardError("wait: seconds must be >= 0")
        return self._do_wait(float(seconds))

    def status(self) -> BoardStatus:
        return self._do_status()

    def settings_snapshot(self) -> dict[str, Any]:
        """The board's settings as they are now, for the records of a calibration, characterization or run
        (as QCoDeS's snapshot): identity, hardware and effective limits, pulse profiles, and on a bench
        of instruments each instrument's identity and settings (:meth:`_instrument_settings`)."""
        info = self.info
        return {"kind": info.kind, "name": info.name, "serial_number": info.serial_number,
                "firmware_version": info.firmware_version, "emulated": info.emulated,
                "read_voltage_v": info.read_voltage_v, "timing_resolution_sec": info.timing_resolution_sec,
                "hardware_limits": info.hardware_limits.model_dump(), "limits": self.limits.model_dump(),
                "profiles": {"set": self._profiles[0].model_dump(), "reset": self._profiles[1].model_dump()},
                "instruments": self._instrument_settings()}

    def _instrument_settings(self) -> dict[str, Any]:
        """Per instrument, its identity and settings; a board without separate instruments has none."""
        return {}

    def true_parameters(self) -> dict[str, Any]:
        """Emulator only: the device parameters the emulated array really has."""
        if not self.info.capabilities.true_parameters:
            raise BoardError("true parameters are known only to an emulator")
        return self._do_true_parameters()

    def snapshot(self) -> bytes:
        """Emulator only: the board's whole state, for exact resume."""
        if not self.info.capabilities.snapshot:
            raise BoardError("only an emulator can save its state; a real array keeps its own")
        return self._do_snapshot()

    def restore(self, blob: bytes) -> None:
        """Emulator only: return to a state saved by :meth:`snapshot`."""
        if not self.info.capabilities.snapshot:
            raise BoardError("only an emulator can restore a saved state")
        self._do_restore(blob)

    def _do_snapshot(self) -> bytes:
        raise BoardError("snapshots are not supported by this board")

    def _do_restore(self, blob: bytes) -> None:
        raise BoardError("snapshots are not supported by this board")

    def safe_idle(self) -> None:
        """Remove every voltage from the array (outputs off, lines grounded/open)."""
        self._do_safe_idle()

    def close(self) -> None:
        """Put the board in safe idle, then release the link.  Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._do_safe_idle()
        except Exception as exc:  # the link may already be gone; still release it
            log.warning("safe idle on close failed: %s", exc)
        finally:
            self._do_close()

    def __enter__(self) -> "Board":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- helpers ----------------------------------------------------------------
    def _check_cells(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        cols = np.asarray(cols, dtype=np.int64).reshape(-1)
        if rows.shape != cols.shape:
            raise BoardError("rows and cols must have the same length")
        n_r, n_c = self.info.rows, self.info.cols
        if rows.size and (rows.min() < 0 or rows.max() >= n_r or cols.min() < 0 or cols.max() >= n_c):
            raise BoardError(f"cell index outside the {n_r}x{n_c} array")
        return rows, cols

    # ---- hooks ------------------------------------------------------------------
    @abc.abstractmethod
    def _do_set_profiles(self, set_profile: PulseProfile, reset_profile: PulseProfile) -> None: ...

    @abc.abstractmethod
    def _do_read_region(self, region: Region) -> np.ndarray: ...

    @abc.abstractmethod
    def _do_read_cells(self, flat_sorted: np.ndarray) -> np.ndarray: ...

    def _do_vmm(self, region: Region, v: np.ndarray, transpose: bool, i_full_scale_a: float) -> np.ndarray:
        raise BoardError("VMM is not implemented by this board")

    @abc.abstractmethod
    def _do_pulse(self, flat_sorted: np.ndarray, counts: np.ndarray, tag: int,
                  last_width_sec: np.ndarray | None = None) -> PulseReport:
        """Apply a checked batch.  ``last_width_sec``: width (s) of each device's last pulse, or None (all full)."""

    @abc.abstractmethod
    def _do_program(self, flat: np.ndarray, targets_s: np.ndarray, tolerance_s: float, max_iter: int) -> ProgramReport: ...

    @abc.abstractmethod
    def _do_clock(self) -> float: ...

    @abc.abstractmethod
    def _do_wait(self, seconds: float) -> float: ...

    @abc.abstractmethod
    def _do_status(self) -> BoardStatus: ...

    def _do_true_parameters(self) -> dict[str, Any]:
        raise BoardError("true parameters are known only to an emulator")

    @abc.abstractmethod
    def _do_safe_idle(self) -> None: ...

    @abc.abstractmethod
    def _do_close(self) -> None: ...
