"""Request payloads of the FPGA protocol: one frozen dataclass per opcode, with its ``encode``/``decode``.

``encode(layout)`` gives the payload bytes; ``decode(data, layout)`` (a classmethod) checks them and
raises :class:`~protocols.opcodes.PayloadError` for any layout error, with the texts a board sends back
in its ``BAD_REQUEST`` reply.  Array data use the vectorised encodings of :mod:`protocols.encoding`;
the byte layouts are written down in ``docs/PROTOCOL.md``.  Requests whose payload carries nothing
(CLOCK, SAFE_IDLE, SNAPSHOT, TRUE_PARAMS) ignore any bytes they get, as boards always have.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from protocols import encoding as enc
from protocols.framing import PIPELINE_VERSION
from protocols.opcodes import (
    Layout,
    Op,
    PayloadError,
    decode_json,
    encode_json,
    expect_end,
    unpack,
)

_DEFAULT = Layout()
_HELLO = struct.Struct("<BH")
_PROFILES = struct.Struct("<dddd")
_TAG = struct.Struct("<Q")
_REGION = struct.Struct("<IIII")
_VMM = struct.Struct("<IIIIBId")
_PROGRAM = struct.Struct("<dIH")
_FORM = struct.Struct("<ddd")
_IV = struct.Struct("<ddI")
_F64 = struct.Struct("<d")
_SNAPSHOT_META = struct.Struct("<I")


def encode_cells(flat_sorted: np.ndarray) -> bytes:
    """``uvarint N | N sparse-index gaps``: a sorted set of cells."""
    return enc.encode_uvarints(np.array([flat_sorted.size])) + enc.encode_sparse_indices(flat_sorted)


def decode_cells(data: bytes, what: str = "READ_CELLS", offset: int = 0) -> tuple[np.ndarray, int]:
    try:
        (n,), off = enc.decode_uvarints(data, 1, offset)
        idx, off = enc.decode_sparse_indices(data, int(n), off)
    except ValueError as exc:
        raise PayloadError(what, str(exc)) from None
    return idx, off


@dataclass(frozen=True)
class HelloRequest:
    """``u8 version``, from version 3 ``u16 chunk_bytes`` for the replies, and from version 5 ``u8 window``,
    the requests the host wants in flight at once.  Decoding never fails: a field left out is None."""

    OP: ClassVar[Op] = Op.HELLO
    version: int
    chunk_bytes: int | None = None
    window: int | None = None

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        if self.version < 3:
            return bytes([self.version])
        window = bytes([1 if self.window is None else self.window]) if self.version >= PIPELINE_VERSION else b""
        return _HELLO.pack(self.version, self.chunk_bytes) + window

    @classmethod
    def decode(cls, data: bytes, layout: Layout = _DEFAULT) -> HelloRequest:
        chunk = _HELLO.unpack_from(data)[1] if len(data) >= _HELLO.size else None
        window = data[_HELLO.size] if layout.version >= PIPELINE_VERSION and len(data) > _HELLO.size else None
        return cls(data[0] if data else layout.version, chunk, window)


@dataclass(frozen=True)
class StatusRequest:
    """Empty, or ``01`` to ask for the emulator's state digest too."""

    OP: ClassVar[Op] = Op.STATUS
    with_digest: bool = False

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        return b"\x01" if self.with_digest else b""

    @classmethod
    def decode(cls, data: bytes, layout: Layout = _DEFAULT) -> StatusRequest:
        return cls(data[:1] == b"\x01")


@dataclass(frozen=True)
class _EmptyRequest:
    OP: ClassVar[Op]

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        return b""

    @classmethod
    def decode(cls, data: bytes, layout: Layout = _DEFAULT):
        return cls()


class ClockRequest(_EmptyRequest):
    OP = Op.CLOCK


class SafeIdleRequest(_EmptyRequest):
    OP = Op.SAFE_IDLE


class SnapshotRequest(_EmptyRequest):
    OP = Op.SNAPSHOT


class TrueParamsRequest(_EmptyRequest):
    OP = Op.TRUE_PARAMS


@dataclass(frozen=True)
class SetProfilesRequest:
    """``f64 set_v | f64 set_width_sec | f64 reset_v | f64 reset_width_sec``."""

    OP: ClassVar[Op] = Op.SET_PROFILES
    set_v: float
    set_width_sec: float
    reset_v: float
    reset_width_sec: float

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        return _PROFILES.pack(self.set_v, self.set_width_sec, self.reset_v, self.reset_width_sec)

    @classmethod
    def decode(cls, data: bytes, layout: Layout = _DEFAULT) -> SetProfilesRequest:
        out = unpack(_PROFILES, data, "SET_PROFILES")
        expect_end(data, _PROFILES.size, "SET_PROFILES")
        if not all(np.isfinite(out)):
            raise PayloadError("SET_PROFILES", "amplitudes and widths must be finite")
        return cls(*out)


@dataclass(frozen=True)
class PulseRequest:
    """``u64 tag`` then the pulse batch of the layout's version (1: no widths; 2 on: flags and widths).

    ``tag`` (0 = none) is remembered by the board as its last applied batch, for write-ahead logs.
    ``last_width_ticks`` (version 2 on): width of each device's last pulse in timing-resolution ticks,
    0 = full profile width; None when every pulse is whole.
    """

    OP: ClassVar[Op] = Op.PULSE
    flat_idx: np.ndarray
    counts: np.ndarray
    tag: int = 0
    last_width_ticks: np.ndarray | None = None

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        if layout.version == 1:
            if self.last_width_ticks is not None and np.any(self.last_width_ticks):
                raise ValueError("protocol version 1 has no pulse widths: the board cannot make partial pulses")
            return _TAG.pack(self.tag) + enc.encode_pulse_batch(self.flat_idx, self.counts)
        return _TAG.pack(self.tag) + enc.encode_pulse_batch_v2(self.flat_idx, self.counts, self.last_width_ticks)

    @classmethod
    def decode(cls, data: bytes, layout: Layout = _DEFAULT) -> PulseRequest:
        (tag,) = unpack(_TAG, data, "PULSE")
        try:
            if layout.version == 1:
                idx, counts, off = enc.decode_pulse_batch(data, _TAG.size)
                ticks = None
            else:
                idx, counts, ticks, off = enc.decode_pulse_batch_v2(data, _TAG.size)
        except ValueError as exc:
            raise PayloadError("PULSE", str(exc)) from None
        expect_end(data, off, "PULSE")
        return cls(idx, counts, tag, ticks)


@dataclass(frozen=True)
class ReadRegionRequest:
    """``u32 row0 | u32 col0 | u32 rows | u32 cols``."""

    OP: ClassVar[Op] = Op.READ_REGION
    row0: int
    col0: int
    rows: int
    cols: int

    @property
    def cell_count(self) -> int:
        return self.rows * self.cols

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        return _REGION.pack(self.row0, self.col0, self.rows, self.cols)

    @classmethod
    def decode(cls, data: bytes, layout: Layout = _DEFAULT) -> ReadRegionRequest:
        out = unpack(_REGION, data, "READ_REGION")
        if len(data) != _REGION.size:
            raise PayloadError("READ_REGION", "payload must be 16 bytes")
        return cls(*out)


@dataclass(frozen=True)
class ReadCellsRequest:
    """The cells as ``uvarint N | N sparse-index gaps``."""

    OP: ClassVar[Op] = Op.READ_CELLS
    flat_idx: np.ndarray

    @property
    def cell_count(self) -> int:
        return int(self.flat_idx.size)

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        return encode_cells(self.flat_idx)

    @classmethod
    def decode(cls, data: bytes, layout: Layout = _DEFAULT) -> ReadCellsRequest:
        flat, off = decode_cells(data)
        if off != len(data):
            raise PayloadError("READ_CELLS", "trailing bytes")
        return cls(flat)


@dataclass(frozen=True)
class VmmRequest:
    """``u32 row0, col0, rows, cols | u8 transpose | u32 batch | f64 ADC full scale (A)`` then the DAC codes:
    int8 before version 4, packed at ``dac_bits`` from it (see :mod:`protocols.encoding`)."""

    OP: ClassVar[Op] = Op.VMM
    row0: int
    col0: int
    rows: int
    cols: int
    transpose: bool
    dac_codes: np.ndarray  # shape (batch, n_in)
    i_full_scale_a: float

    @property
    def n_in(self) -> int:
        return self.cols if self.transpose else self.rows

    @property
    def n_out(self) -> int:
        return self.rows if self.transpose else self.cols

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        b = self.dac_codes.shape[0]
        codes = self.dac_codes.reshape(-1)
        bits = layout.dac_bits
        body = enc.encode_i8(codes) if bits is None else enc.encode_packed(codes, bits, signed=True)
        return _VMM.pack(self.row0, self.col0, self.rows, self.cols, int(self.transpose), b,
                         self.i_full_scale_a) + body

    @classmethod
    def decode(cls, data: bytes, layout: Layout = _DEFAULT) -> VmmRequest:
        r0, c0, nr, nc, tr, b, ifs = unpack(_VMM, data, "VMM")
        n_in = nc if tr else nr
        bits = layout.dac_bits
        need = b * n_in if bits is None else enc.packed_size(b * n_in, bits)
        if need > len(data) - _VMM.size:
            raise PayloadError("VMM", f"header announces {b}x{n_in} inputs but only {len(data) - _VMM.size} "
                                      "bytes follow")
        try:
            if bits is None:
                codes, off = enc.decode_i8(data, b * n_in, _VMM.size)
            else:
                codes, off = enc.decode_packed(data, b * n_in, bits, True, _VMM.size)
        except ValueError as exc:
            raise PayloadError("VMM", str(exc)) from None
        expect_end(data, off, "VMM")
        if not np.isfinite(ifs) or ifs <= 0:
            raise PayloadError("VMM", "the ADC full scale must be a positive number of amps")
        return cls(r0, c0, nr, nc, bool(tr), codes.reshape(b, n_in), ifs)


@dataclass(frozen=True)
class ProgramRequest:
    """``f64 tolerance (S) | u32 max_iter | u16 max pulses per round | cells | N u16 target codes``."""

    OP: ClassVar[Op] = Op.PROGRAM
    flat_idx: np.ndarray
    target_codes: np.ndarray
    tolerance_s: float
    max_iter: int
    max_pulses_per_round: int

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        return (_PROGRAM.pack(self.tolerance_s, self.max_iter, self.max_pulses_per_round)
                + encode_cells(self.flat_idx) + enc.encode_u16(self.target_codes))

    @classmethod
    def decode(cls, data: bytes, layout: Layout = _DEFAULT) -> ProgramRequest:
        tol, max_iter, per_round = unpack(_PROGRAM, data, "PROGRAM")
        idx, off = decode_cells(data, "PROGRAM", _PROGRAM.size)
        try:
            targets, off = enc.decode_u16(data, idx.size, off)
        except ValueError as exc:
            raise PayloadError("PROGRAM", str(exc)) from None
        expect_end(data, off, "PROGRAM")
        return cls(idx, targets, tol, max_iter, per_round)


@dataclass(frozen=True)
class FormRequest:
    """``f64 voltage (V) | f64 width (s) | f64 compliance (A) | cells``."""

    OP: ClassVar[Op] = Op.FORM
    flat_idx: np.ndarray
    voltage_v: float
    width_sec: float
    compliance_a: float

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        return _FORM.pack(self.voltage_v, self.width_sec, self.compliance_a) + encode_cells(self.flat_idx)

    @classmethod
    def decode(cls, data: bytes, layout: Layout = _DEFAULT) -> FormRequest:
        v, w, icc = unpack(_FORM, data, "FORM")
        idx, off = decode_cells(data, "FORM", _FORM.size)
        expect_end(data, off, "FORM")
        return cls(idx, v, w, icc)


@dataclass(frozen=True)
class IvSweepRequest:
    """``f64 dwell per step (s) | f64 compliance (A) | u32 n_v | n_v f64 voltages (V) | cells``."""

    OP: ClassVar[Op] = Op.IV_SWEEP
    flat_idx: np.ndarray
    voltages_v: np.ndarray
    dwell_sec: float
    compliance_a: float

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        return (_IV.pack(self.dwell_sec, self.compliance_a, self.voltages_v.size) + enc.encode_f64(self.voltages_v)
                + encode_cells(self.flat_idx))

    @classmethod
    def decode(cls, data: bytes, layout: Layout = _DEFAULT) -> IvSweepRequest:
        step, icc, n_v = unpack(_IV, data, "IV_SWEEP")
        if 8 * n_v > len(data):
            raise PayloadError("IV_SWEEP", "voltage count exceeds the payload")
        try:
            volts, off = enc.decode_f64(data, n_v, _IV.size)
        except ValueError as exc:
            raise PayloadError("IV_SWEEP", str(exc)) from None
        idx, off = decode_cells(data, "IV_SWEEP", off)
        expect_end(data, off, "IV_SWEEP")
        return cls(idx, volts, step, icc)


@dataclass(frozen=True)
class WaitRequest:
    """``f64 seconds`` of board time to let pass."""

    OP: ClassVar[Op] = Op.WAIT
    seconds: float

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        return _F64.pack(self.seconds)

    @classmethod
    def decode(cls, data: bytes, layout: Layout = _DEFAULT) -> WaitRequest:
        return cls(decode_f64(data, "WAIT"))


def decode_f64(data: bytes, what: str) -> float:
    (x,) = unpack(_F64, data, what)
    expect_end(data, _F64.size, what)
    return x


@dataclass(frozen=True)
class SnapshotImage:
    """The emulator's state: ``u32 n | n bytes JSON meta | array state``.  The SNAPSHOT reply and the RESTORE
    request; opaque to the host, which keeps and returns the bytes."""

    OP: ClassVar[Op] = Op.RESTORE
    meta: dict
    state: bytes

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        meta = encode_json(self.meta)
        return _SNAPSHOT_META.pack(len(meta)) + meta + self.state

    @classmethod
    def decode(cls, data: bytes, layout: Layout = _DEFAULT, request: object = None) -> SnapshotImage:
        if len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "little"):
            raise PayloadError("RESTORE", "truncated snapshot")
        n = int.from_bytes(data[:4], "little")
        return cls(decode_json(data[4:4 + n], "RESTORE"), bytes(data[4 + n:]))


RestoreRequest = SnapshotImage
