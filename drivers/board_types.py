"""The values of the Board contract (:mod:`drivers.board`): what a board reports (identity,
capabilities, status, pulse and write-verify reports) and the requests it takes (regions, pulse
batches), plus the handle of an asynchronous request.  ``drivers.board`` re-exports every name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from drivers.errors import BoardError
from drivers.limits import SafetyLimits
from protocols.unit_names import AcceptsOldSecondNames

T = TypeVar("T")


class Capabilities(BaseModel):
    """What a board can do beyond reads and pulses."""

    model_config = ConfigDict(frozen=True)

    vmm: bool = False
    vmm_transpose: bool = False
    write_verify: bool = False
    virtual_clock: bool = False
    true_parameters: bool = Field(False, description="emulator only: can report its true device parameters")
    snapshot: bool = Field(False, description="emulator only: can save and restore its whole state")
    iv_sweep: bool = False
    forming: bool = False
    partial_pulses: bool = Field(False, description="can end a device's write event with a width-modulated partial "
                                                    "pulse (PulseBatch.last_pulse_width_sec): the bp baseline and "
                                                    "the calibration's random walk need it")
    durable_pulse_tags: bool = Field(
        False, description="the board itself keeps the tag of the last batch it applied (status().last_pulse_tag), "
                           "so it survives a crash of the host process; without it a resuming host must tell from "
                           "a read-back whether a batch was applied (hil.exactly_once)")


class BoardInfo(AcceptsOldSecondNames):
    """Identity, geometry, capabilities, hardware limits and converter resolution of a board."""

    model_config = ConfigDict(frozen=True)

    kind: str = Field(description="'fpga', 'visa' or 'emulator'")
    name: str
    serial_number: str
    firmware_version: str
    protocol_version: int
    rows: int
    cols: int
    capabilities: Capabilities
    hardware_limits: SafetyLimits
    read_voltage_v: float = Field(description="voltage applied to a cell by read()")
    g_lsb_s: float = Field(description="conductance of one read code, siemens")
    g_full_scale_s: float = Field(description="largest conductance read() can report, siemens")
    dac_bits: int = 8
    dac_full_scale_v: float = Field(0.2, description="VMM input voltage of the largest DAC code")
    adc_bits: int = 10
    adc_full_scale_a: tuple[float, float] = Field(
        (1e-6, 1e-2), description="range of selectable VMM ADC full-scale currents, amps"
    )
    timing_resolution_sec: float = 1e-9
    emulated: bool = False
    device_preset: str | None = Field(None, description="emulator only: the device preset the array was built from")
    device_config: str | None = Field(None, description="emulator only: the file that overrode the preset's fields")


class PulseReport(BaseModel):
    """What one pulse batch did."""

    devices: int = Field(description="devices that received at least one pulse")
    set_pulses: int
    reset_pulses: int
    energy_j: float = Field(description="write energy of the batch, joules")
    duration_sec: float = Field(description="board-clock time the batch took, seconds")
    clock_sec: float = Field(description="board clock after the batch, seconds")

    @property
    def pulses(self) -> int:
        return self.set_pulses + self.reset_pulses


class BoardStatus(BaseModel):
    """Running totals the board keeps since it was opened or reset.

    Energies (joules, docs/ENERGY.md): ``write_energy_j`` = ``write_device_energy_j`` (through the
    devices) + ``write_periphery_energy_j`` (drivers and line charging); ``read_energy_j`` is the
    cells' ``V^2 G t`` of reads and VMMs; ``adc_energy_j`` and ``dac_energy_j`` the converters'.
    A board that cannot split an energy reports 0 for the part it does not know.
    """

    clock_sec: float
    pulses_total: int
    set_pulses_total: int
    reset_pulses_total: int
    write_events_total: int
    write_energy_j: float
    write_device_energy_j: float = 0.0
    write_periphery_energy_j: float = 0.0
    read_energy_j: float
    adc_energy_j: float
    dac_energy_j: float = 0.0
    adc_conversions_total: int = 0
    dac_conversions_total: int = 0
    cells_read_total: int
    vmm_calls_total: int
    max_pulses_per_device: int
    state_digest: str | None = Field(None, description="emulator only: hash of the true array state")
    last_pulse_tag: int = Field(0, description="tag of the last tagged pulse batch the board applied")


@dataclass(frozen=True)
class Region:
    """A rectangle of cells: ``rows`` x ``cols`` starting at (``row0``, ``col0``)."""

    row0: int
    col0: int
    rows: int
    cols: int

    @property
    def size(self) -> int:
        return self.rows * self.cols

    def check_within(self, n_rows: int, n_cols: int) -> None:
        if self.rows <= 0 or self.cols <= 0 or self.row0 < 0 or self.col0 < 0:
            raise BoardError(f"region {self} must have non-negative origin and positive size")
        if self.row0 + self.rows > n_rows or self.col0 + self.cols > n_cols:
            raise BoardError(
                f"region rows {self.row0}..{self.row0 + self.rows - 1}, cols {self.col0}..{self.col0 + self.cols - 1} "
                f"lies outside the {n_rows}x{n_cols} array"
            )


@dataclass(frozen=True)
class PulseBatch:
    """A sparse batch of write pulses: device ``(rows[k], cols[k])`` gets ``counts[k]`` pulses.

    A positive count is that many SET pulses, a negative one that many RESET pulses
    (each with the board's current profile for the polarity).  Devices appear once;
    one batch is one write event for every device it names.

    ``last_pulse_width_sec`` (optional, seconds, one entry per device): the width of
    each device's LAST pulse -- a width-modulated partial pulse, whose mean step
    scales with its width -- at most its polarity's profile width (equal to it: a full
    pulse).  ``None``: every pulse has the profile's width.  The board checks every
    width against the effective limits (``min_pulse_width_sec``..``max_pulse_width_sec``)
    and makes it on its timing grid (``BoardInfo.timing_resolution_sec``, nearest point).
    """

    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray
    last_pulse_width_sec: np.ndarray | None = None

    @classmethod
    def from_dense(cls, counts: np.ndarray, row0: int = 0, col0: int = 0) -> "PulseBatch":
        """Batch from a dense signed count matrix placed at (row0, col0); zeros are skipped."""
        counts = np.asarray(counts)
        r, c = np.nonzero(counts)
        return cls(r + row0, c + col0, counts[r, c].astype(np.int64))

    @classmethod
    def empty(cls) -> "PulseBatch":
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z)

    def __len__(self) -> int:
        return int(np.size(self.counts))

    def flat_index(self, n_cols: int) -> np.ndarray:
        return np.asarray(self.rows, dtype=np.int64) * n_cols + np.asarray(self.cols, dtype=np.int64)


@dataclass(frozen=True)
class ProgramReport:
    """Result of write-verify programming, one entry per requested device."""

    achieved_s: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    pulses: int
    energy_j: float

    @property
    def converged_fraction(self) -> float:
        return float(np.mean(self.converged)) if self.converged.size else 1.0


@dataclass(frozen=True)
class FormReport:
    """Which devices a forming pulse formed, and their conductance afterwards."""

    formed: np.ndarray
    g_after_s: np.ndarray


class Pending(Generic[T]):
    """The result of a request that may still be on its way (:meth:`Board.pulse_async`).

    This base class holds a result that is already there (a board that does not pipeline);
    a pipelining board's subclass waits for the reply in :meth:`result`.
    """

    def __init__(self, value: T | None = None, error: BaseException | None = None):
        self._value = value
        self._error = error

    @property
    def done(self) -> bool:
        return True

    def result(self) -> T:
        """The result; raises the request's error if it failed."""
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
