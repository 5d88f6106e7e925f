"""The bench file (``bench.toml``) of a VISA bench: instruments, wiring, settings; validated with pydantic.

Example (``hil emulator serve-bench`` writes one like it for the emulated bench)::

    [bench]
    name = "RRAM bench 2"
    rows = 8                      # array word lines
    cols = 8                      # array bit lines
    visa_library = "@py"          # pyvisa backend ("@py" pyvisa-py, "" the system VISA, "@sim" ...)
    timeout_sec = 2.0             # per instrument exchange
    emulated = false              # true: the instruments are the firmware_stub emulators
    virtual_clock = false         # true (emulated benches only): clock()/wait() use the emulators' clock

    [smu]                         # Keithley 2450
    resource = "TCPIP::192.168.1.20::5025::SOCKET"
    read_voltage_v = 0.2
    current_range_a = 1e-4        # fixed measure range; reads up to 1.05x this
    nplc = 1.0
    # compliance_a = 1e-4         # default: the effective safety limit compliance_a
    output_off_mode = "NORM"      # HIMP | NORM | ZERO | GUAR
    terminals = "FRON"            # FRON | REAR
    hot_switching = false         # true keeps the output on while the matrix moves between cells

    [pulse_generator]             # Keysight 33500B series
    resource = "TCPIP::192.168.1.21::5025::SOCKET"
    channel = 1
    # period_sec = 1e-6           # pulse period in a burst; default max(min_period_sec, 2 x width)
    min_period_sec = 1e-6
    edge_time_sec = 8.4e-9

    [switch_matrix]               # Keithley 707B
    resource = "TCPIP::192.168.1.22::5025::SOCKET"

    [wiring]                      # matrix rows carry the instrument terminals ...
    smu_hi = "A"
    smu_lo = "B"
    pulse_hi = "C"
    pulse_lo = "D"
    word_lines = "1-8"            # ... matrix columns reach the array lines (1-based, 12 per card:
    bit_lines = "9-16"            #     column 13 is slot 2 column 01); a list [1, 2, ...] works too
    columns_per_slot = 12

    [write_verify]                # host-side program-and-verify
    nominal_step_s = 5e-7
    max_pulses_per_round = 32

    [limits]                      # the bench's hardware limits: what the devices, probe card and wiring tolerate
    max_set_v = 3.0               # largest SET amplitude, volts
    max_reset_v = 3.0             # largest |RESET amplitude|, volts
    max_read_v = 0.5              # largest |read voltage|
    max_form_v = 4.0
    compliance_a = 1e-3
    min_pulse_width_sec = 1e-8
    max_pulse_width_sec = 1e-3
    max_pulses_per_batch = 64000000
    max_pulses_per_device = 255

The ``[limits]`` section states the bench's **hardware limits**, the analogue of what an
FPGA controller reports about itself.  Every field it leaves out -- or the whole section
-- takes the device-safe default of :data:`drivers.limits.DEVICE_SAFE_LIMITS` (the values
above: the emulated array and FPGA board's own), never the instruments' ratings, which
are far beyond what a memristor survives (the pulse generator makes 10 V).  A stated
value beyond an instrument's rating is cut to the rating.  A user limits file
(``hil --limits FILE``) can only tighten these: a looser user value is logged as a
warning and not used, and ``hil info`` shows which side set each effective limit.
``hil emulator serve-bench`` writes the section out in full.

Every problem is reported with the file and the field (:class:`BenchFileError`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from drivers.errors import AddressError
from drivers.limits import SafetyLimits
from protocols.unit_names import AcceptsOldSecondNames

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MATRIX_ROWS = "ABCDEFGH"
MAX_SLOTS = 6


class BenchFileError(AddressError):
    """The bench file is missing, not TOML, or describes an impossible bench."""


class _Section(AcceptsOldSecondNames):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BenchSection(_Section):
    name: str = Field("VISA bench", description="shown by hil info and recorded in every run")
    rows: int = Field(ge=1, le=64, description="array word lines")
    cols: int = Field(ge=1, le=64, description="array bit lines")
    visa_library: str = Field("@py", description="pyvisa backend: '@py', '' (system VISA), '@sim' ...")
    timeout_sec: float = Field(2.0, gt=0, le=600, description="per instrument exchange")
    emulated: bool = Field(False, description="the instruments are the firmware_stub emulators")
    virtual_clock: bool = Field(False, description="clock()/wait() use the emulators' virtual clock")

    @model_validator(mode="after")
    def _virtual_needs_emulated(self) -> "BenchSection":
        if self.virtual_clock and not self.emulated:
            raise ValueError("virtual_clock = true needs emulated = true: real instruments have no virtual clock")
        return self


class SmuSection(_Section):
    """Keithley 2450 source-measure unit: reads, I-V sweeps and forming."""

    resource: str = Field(min_length=1, description="VISA resource, e.g. TCPIP::192.168.1.20::5025::SOCKET")
    read_voltage_v: float = Field(0.2, gt=0, le=21.0, description="voltage of a read (checked against max_read_v)")
    current_range_a: float = Field(1e-4, ge=1e-8, le=1.0, description="fixed measure range; reads up to 1.05x this")
    nplc: float = Field(1.0, ge=0.01, le=10.0, description="integration time in power-line cycles")
    compliance_a: float | None = Field(None, gt=0, le=1.05, description="current limit of reads; unset: the "
                                                                      "effective safety limit compliance_a")
    output_off_mode: Literal["HIMP", "NORM", "ZERO", "GUAR"] = Field("NORM", description="state of the output "
                                                                                       "when off")
    terminals: Literal["FRON", "REAR"] = Field("FRON", description="front or rear terminals")
    hot_switching: bool = Field(False, description="true keeps the output on while the matrix moves between cells")


class PulseGeneratorSection(_Section):
    """Keysight 33500B series waveform generator: SET and RESET pulse bursts."""

    resource: str = Field(min_length=1, description="VISA resource, e.g. TCPIP::192.168.1.21::5025::SOCKET")
    channel: Literal[1, 2] = Field(1, description="output channel wired to the matrix")
    period_sec: float | None = Field(None, gt=0, le=1e3, description="pulse period in a burst; unset: "
                                                                   "max(min_period_sec, 2 x width)")
    min_period_sec: float = Field(1e-6, gt=0, le=1e3, description="shortest pulse period the bench allows")
    edge_time_sec: float = Field(8.4e-9, ge=8.4e-9, le=1e-6, description="rise and fall time of a pulse")


class SwitchMatrixSection(_Section):
    """Keithley 707B switching matrix: connects the instruments to one array cell at a time."""

    resource: str = Field(min_length=1, description="VISA resource, e.g. TCPIP::192.168.1.22::5025::SOCKET")


def _columns(value: object) -> list[int]:
    """``[1, 2, 3]`` or ``"1-8"`` / ``"1-4,9,11-12"`` -> list of ints."""
    if isinstance(value, str):
        out: list[int] = []
        for part in value.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)\s*-\s*(\d+)|(\d+)", part)
            if not m:
                raise ValueError(f"cannot read matrix columns {value!r}: write e.g. \"1-8\" or \"1-4,9\"")
            if m.group(3):
                out.append(int(m.group(3)))
            else:
                a, b = int(m.group(1)), int(m.group(2))
                if b < a:
                    raise ValueError(f"column range {part!r} runs backwards")
                out.extend(range(a, b + 1))
        return out
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    raise ValueError("matrix columns must be a list of integers or a range string like \"1-8\"")


class WiringSection(_Section):
    """Matrix rows carry the instrument terminals; matrix columns reach the array lines."""

    smu_hi: str = Field("A", description="matrix row (A-H) of the SMU's HI terminal")
    smu_lo: str = Field("B", description="matrix row of the SMU's LO terminal")
    pulse_hi: str = Field("C", description="matrix row of the pulse generator's output")
    pulse_lo: str = Field("D", description="matrix row of the pulse generator's ground")
    word_lines: list[int] = Field(description="matrix columns of the array's word lines, in order (1-based; "
                                              "\"1-8\", \"1-4,9\" or a list); as many as [bench] rows")
    bit_lines: list[int] = Field(description="matrix columns of the bit lines, in order; as many as [bench] cols")
    columns_per_slot: int = Field(12, ge=1, le=99, description="columns of one matrix card: column 13 is slot 2 "
                                                                "column 01 with 12")

    @field_validator("word_lines", "bit_lines", mode="before")
    @classmethod
    def _ranges(cls, v: object) -> list[int]:
        return _columns(v)

    @field_validator("smu_hi", "smu_lo", "pulse_hi", "pulse_lo")
    @classmethod
    def _row(cls, v: str) -> str:
        v = v.strip().upper()
        if len(v) != 1 or v not in MATRIX_ROWS:
            raise ValueError(f"matrix row must be one letter of {MATRIX_ROWS}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "WiringSection":
        terms = {"smu_hi": self.smu_hi, "smu_lo": self.smu_lo, "pulse_hi": self.pulse_hi, "pulse_lo": self.pulse_lo}
        if len(set(terms.values())) != 4:
            raise ValueError(f"the four terminals need four different matrix rows, got {terms}")
        cols = self.word_lines + self.bit_lines
        dup = sorted({c for c in cols if cols.count(c) > 1})
        if dup:
            raise ValueError(f"matrix column(s) {dup} are wired to more than one array line")
        top = self.columns_per_slot * MAX_SLOTS
        bad = [c for c in cols if not 1 <= c <= top]
        if bad:
            raise ValueError(f"matrix column(s) {bad} do not exist (1..{top}: {MAX_SLOTS} slots of "
                             f"{self.columns_per_slot} columns)")
        return self

    def channel(self, row: str, column: int) -> str:
        """707B crosspoint of matrix row ``row`` and global column ``column``: ``"1A05"``."""
        slot, col = divmod(column - 1, self.columns_per_slot)
        return f"{slot + 1}{row}{col + 1:02d}"


class WriteVerifySection(_Section):
    nominal_step_s: float = Field(5e-7, gt=0, description="initial estimate of the change per pulse")
    max_pulses_per_round: int = Field(32, ge=1, le=10_000, description="most pulses per device in one "
                                                                         "program-and-verify round")


class BenchFile(_Section):
    """A validated bench file."""

    bench: BenchSection
    smu: SmuSection
    pulse_generator: PulseGeneratorSection
    switch_matrix: SwitchMatrixSection
    wiring: WiringSection
    write_verify: WriteVerifySection = WriteVerifySection()
    limits: SafetyLimits | None = Field(None, description="the [limits] fields as written; the fields left out "
                                                          "take DEVICE_SAFE_LIMITS (drivers.visa_bench."
                                                          "bench_hardware_limits)")

    @model_validator(mode="after")
    def _geometry(self) -> "BenchFile":
        w, b = self.wiring, self.bench
        if len(w.word_lines) != b.rows:
            raise ValueError(f"[wiring] word_lines names {len(w.word_lines)} matrix columns but "
                             f"[bench] rows = {b.rows}")
        if len(w.bit_lines) != b.cols:
            raise ValueError(f"[wiring] bit_lines names {len(w.bit_lines)} matrix columns but "
                             f"[bench] cols = {b.cols}")
        resources = [self.smu.resource, self.pulse_generator.resource, self.switch_matrix.resource]
        if len(set(resources)) != 3:
            raise ValueError("the SMU, pulse generator and switch matrix need three different VISA resources")
        return self


def _format_errors(path: Path, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = f"[{loc[0]}] {'.'.join(map(str, loc[1:]))}" if len(loc) > 1 else (f"[{loc[0]}]" if loc else "")
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {msg}" if where else msg)
    return f"bench file {path}: " + "; ".join(lines)


def parse_bench_file(text: str, path: str | Path = "<bench file>") -> BenchFile:
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BenchFileError(f"bench file {path} is not valid TOML: {exc}") from None
    try:
        return BenchFile(**data)
    except ValidationError as exc:
        raise BenchFileError(_format_errors(path, exc)) from None
    except TypeError as exc:
        raise BenchFileError(f"bench file {path}: {exc}") from None


def load_bench_file(path: str | Path) -> BenchFile:
    """Read and validate a bench file; :class:`BenchFileError` names the file and the bad field."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BenchFileError(f"bench file {path} does not exist") from None
    except OSError as exc:
        raise BenchFileError(f"cannot read bench file {path}: {exc}") from None
    return parse_bench_file(text, path)
