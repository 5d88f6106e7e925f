"""Reply payloads of the FPGA protocol: one frozen dataclass per opcode, with its ``encode``/``decode``.

A reply's layout depends on its request (how many cells, which batch), so ``decode(data, request,
layout)`` takes the request it answers.  Refusals of any opcode carry an :class:`ErrorReply`.  Identity
and status use UTF-8 JSON because they are small, rare and must stay extensible.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from protocols import encoding as enc
from protocols.opcodes import (
    Layout,
    Op,
    PayloadError,
    decode_json,
    encode_json,
    expect_end,
    unpack,
)
from protocols.requests import decode_f64

_DEFAULT = Layout()
_PULSE_REPORT = struct.Struct("<IIIddd")
_PROGRAM_RESULT = struct.Struct("<Qd")
_F64 = struct.Struct("<d")


@dataclass(frozen=True)
class ErrorReply:
    """``{"error": text}``, the payload of every reply whose status is not OK."""

    text: str

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        return encode_json({"error": self.text})

    @classmethod
    def decode(cls, data: bytes, request: object = None, layout: Layout = _DEFAULT) -> ErrorReply:
        """Never fails: a payload that is not the JSON error object is shown as text."""
        try:
            return cls(decode_json(data, "error").get("error", ""))
        except PayloadError:
            return cls(bytes(data[:200]).decode(errors="replace"))


@dataclass(frozen=True)
class _JsonReply:
    OP: ClassVar[Op]
    fields: dict[str, Any]

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        return encode_json(self.fields)

    @classmethod
    def decode(cls, data: bytes, request: object = None, layout: Layout = _DEFAULT):
        return cls(decode_json(data, f"{cls.OP.name} reply"))


class HelloReply(_JsonReply):
    """The board's identity, limits, converters and protocol parameters (``max_in_flight`` from version 5)."""

    OP = Op.HELLO


class StatusReply(_JsonReply):
    OP = Op.STATUS


class TrueParamsReply(_JsonReply):
    """The emulator's hidden device parameters (emulators only)."""

    OP = Op.TRUE_PARAMS


@dataclass(frozen=True)
class EmptyReply:
    """No payload: the reply of SET_PROFILES, SAFE_IDLE and RESTORE."""

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        return b""

    @classmethod
    def decode(cls, data: bytes, request: object = None, layout: Layout = _DEFAULT) -> EmptyReply:
        return cls()


@dataclass(frozen=True)
class PulseResult:
    """``u32 devices | u32 SET pulses | u32 RESET pulses | f64 energy (J) | f64 duration (s) | f64 clock (s)``."""

    OP: ClassVar[Op] = Op.PULSE
    devices: int
    set_pulses: int
    reset_pulses: int
    energy_j: float
    duration_sec: float
    clock_sec: float

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        return _PULSE_REPORT.pack(self.devices, self.set_pulses, self.reset_pulses, self.energy_j, self.duration_sec,
                                  self.clock_sec)

    @classmethod
    def decode(cls, data: bytes, request: object = None, layout: Layout = _DEFAULT) -> PulseResult:
        return cls(*unpack(_PULSE_REPORT, data, "PULSE reply"))


@dataclass(frozen=True)
class CodesReply:
    """``N u16`` conductance codes, one per cell read (READ_REGION, READ_CELLS)."""

    codes: np.ndarray

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        return enc.encode_u16(self.codes)

    @classmethod
    def decode(cls, data: bytes, request, layout: Layout = _DEFAULT) -> CodesReply:
        return cls(decode_codes_u16(data, request.cell_count, f"{request.OP.name} reply"))


def decode_codes_u16(data: bytes, count: int, what: str) -> np.ndarray:
    try:
        codes, off = enc.decode_u16(data, count)
    except ValueError as exc:
        raise PayloadError(what, str(exc)) from None
    expect_end(data, off, what)
    return codes


@dataclass(frozen=True)
class VmmReply:
    """The ADC codes, ``(batch, n_out)``: int16 before version 4, packed at ``adc_bits`` from it."""

    OP: ClassVar[Op] = Op.VMM
    codes: np.ndarray

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        flat = self.codes.reshape(-1)
        bits = layout.adc_bits
        return enc.encode_i16(flat) if bits is None else enc.encode_packed(flat, bits, signed=True)

    @classmethod
    def decode(cls, data: bytes, request, layout: Layout = _DEFAULT) -> VmmReply:
        batch, n_out, bits = request.dac_codes.shape[0], request.n_out, layout.adc_bits
        try:
            if bits is None:
                codes, off = enc.decode_i16(data, batch * n_out)
            else:
                codes, off = enc.decode_packed(data, batch * n_out, bits, True)
        except ValueError as exc:
            raise PayloadError("VMM reply", str(exc)) from None
        expect_end(data, off, "VMM reply")
        return cls(codes.reshape(batch, n_out))


@dataclass(frozen=True)
class ProgramReply:
    """``u64 pulses | f64 energy (J) | N u16 achieved codes | converged bits | N u8 iterations (capped at 255)``."""

    OP: ClassVar[Op] = Op.PROGRAM
    achieved_codes: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    pulses: int
    energy_j: float

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        return (_PROGRAM_RESULT.pack(self.pulses, self.energy_j) + enc.encode_u16(self.achieved_codes)
                + np.packbits(self.converged.astype(bool)).tobytes()
                + np.minimum(self.iterations, 255).astype(np.uint8).tobytes())

    @classmethod
    def decode(cls, data: bytes, request, layout: Layout = _DEFAULT) -> ProgramReply:
        n = request.flat_idx.size
        pulses, energy = unpack(_PROGRAM_RESULT, data, "PROGRAM reply")
        off = _PROGRAM_RESULT.size
        try:
            codes, off = enc.decode_u16(data, n, off)
        except ValueError as exc:
            raise PayloadError("PROGRAM reply", str(exc)) from None
        nbits = -(-n // 8)
        if len(data) != off + nbits + n:
            raise PayloadError("PROGRAM reply", "wrong length")
        conv = np.unpackbits(np.frombuffer(data, np.uint8, nbits, off))[:n].astype(bool)
        iters = np.frombuffer(data, np.uint8, n, off + nbits).astype(np.int64)
        return cls(codes, conv, iters, int(pulses), float(energy))


@dataclass(frozen=True)
class FormReply:
    """``formed bits | N u16`` conductance codes read after forming."""

    OP: ClassVar[Op] = Op.FORM
    formed: np.ndarray
    g_codes: np.ndarray

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        return np.packbits(self.formed.astype(bool)).tobytes() + enc.encode_u16(self.g_codes)

    @classmethod
    def decode(cls, data: bytes, request, layout: Layout = _DEFAULT) -> FormReply:
        n = request.flat_idx.size
        nbits = -(-n // 8)
        formed = np.unpackbits(np.frombuffer(data, np.uint8, min(nbits, len(data))))[:n].astype(bool)
        return cls(formed, decode_codes_u16(data[nbits:], n, "FORM reply"))


@dataclass(frozen=True)
class IvSweepReply:
    """``n_cells x n_v f64`` currents (A), cell-major."""

    OP: ClassVar[Op] = Op.IV_SWEEP
    currents_a: np.ndarray

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        return enc.encode_f64(self.currents_a.reshape(-1))

    @classmethod
    def decode(cls, data: bytes, request, layout: Layout = _DEFAULT) -> IvSweepReply:
        n_cells, n_v = request.flat_idx.size, request.voltages_v.size
        try:
            cur, off = enc.decode_f64(data, n_cells * n_v)
        except ValueError as exc:
            raise PayloadError("IV_SWEEP reply", str(exc)) from None
        expect_end(data, off, "IV_SWEEP reply")
        return cls(cur.reshape(n_cells, n_v))


@dataclass(frozen=True)
class ClockReply:
    """``f64`` board clock (s): the reply of CLOCK and WAIT."""

    clock_sec: float

    def encode(self, layout: Layout = _DEFAULT) -> bytes:
        return _F64.pack(self.clock_sec)

    @classmethod
    def decode(cls, data: bytes, request, layout: Layout = _DEFAULT) -> ClockReply:
        return cls(decode_f64(data, f"{request.OP.name} reply"))
