"""Opcodes, status codes and the payload layout of every message of the FPGA protocol.

Each request/response pair is a pure function pair ``encode_*``/``decode_*``
between Python values (numpy arrays on hot paths) and payload bytes.  Array data
uses the vectorised encodings of :mod:`protocols.encoding`; identity and status use
UTF-8 JSON because they are small, rare and must stay extensible.  The full byte
layouts are written down in ``docs/PROTOCOL.md``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from protocols import encoding as enc


class Op(IntEnum):
    HELLO = 0x01
    STATUS = 0x02
    SET_PROFILES = 0x10
    PULSE = 0x20
    READ_REGION = 0x30
    READ_CELLS = 0x31
    VMM = 0x40
    PROGRAM = 0x50
    FORM = 0x52
    IV_SWEEP = 0x54
    CLOCK = 0x60
    WAIT = 0x61
    SAFE_IDLE = 0x70
    SNAPSHOT = 0x7C
    RESTORE = 0x7D
    TRUE_PARAMS = 0x7E


class Status(IntEnum):
    OK = 0
    UNKNOWN_OPCODE = 1
    BAD_REQUEST = 2
    LIMIT_VIOLATION = 3
    UNSUPPORTED = 4
    BUSY = 5
    INTERNAL = 6
    VERSION_MISMATCH = 7


class PayloadError(ValueError):
    """A payload does not have the layout its opcode requires."""


def _unpack(fmt: struct.Struct, data: bytes, what: str, offset: int = 0) -> tuple:
    if len(data) < offset + fmt.size:
        raise PayloadError(f"{what}: payload of {len(data)} bytes is shorter than the {offset + fmt.size} required")
    return fmt.unpack_from(data, offset)


def _expect_end(data: bytes, offset: int, what: str) -> None:
    if offset != len(data):
        raise PayloadError(f"{what}: {len(data) - offset} unexpected trailing bytes")


# ---- JSON messages (HELLO, STATUS, TRUE_PARAMS, error texts) -----------------------
def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def decode_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"{what}: not valid UTF-8 JSON ({exc})") from None


# ---- SET_PROFILES --------------------------------------------------------------
_PROFILES = struct.Struct("<dddd")


def encode_profiles(set_v: float, set_w: float, reset_v: float, reset_w: float) -> bytes:
    return _PROFILES.pack(set_v, set_w, reset_v, reset_w)


def decode_profiles(data: bytes) -> tuple[float, float, float, float]:
    out = _unpack(_PROFILES, data, "SET_PROFILES")
    _expect_end(data, _PROFILES.size, "SET_PROFILES")
    if not all(np.isfinite(out)):
        raise PayloadError("SET_PROFILES: amplitudes and widths must be finite")
    return out


# ---- PULSE ------------------------------------------------------------------------
_PULSE_REPORT = struct.Struct("<IIIddd")


@dataclass(frozen=True)
class PulseResult:
    devices: int
    set_pulses: int
    reset_pulses: int
    energy_j: float
    duration_s: float
    clock_s: float


_TAG = struct.Struct("<Q")


def encode_pulse_request(flat_idx: np.ndarray, counts: np.ndarray, tag: int = 0,
                         last_width_ticks: np.ndarray | None = None, version: int = 2) -> bytes:
    """``u64 tag`` then the pulse batch of protocol ``version`` (1: no widths; 2: flags and widths).

    ``tag`` (0 = none) is remembered by the board as its last applied batch, for write-ahead logs.
    ``last_width_ticks`` (version 2 only): width of each device's last pulse in timing-resolution
    ticks, 0 = full profile width.
    """
    if version == 1:
        if last_width_ticks is not None and np.any(last_width_ticks):
            raise ValueError("protocol version 1 has no pulse widths: the board cannot make partial pulses")
        return _TAG.pack(tag) + enc.encode_pulse_batch(flat_idx, counts)
    return _TAG.pack(tag) + enc.encode_pulse_batch_v2(flat_idx, counts, last_width_ticks)


def decode_pulse_request(data: bytes, version: int = 2) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None]:
    """(flat indices, counts, tag, last-pulse width ticks or None) of a PULSE of protocol ``version``."""
    (tag,) = _unpack(_TAG, data, "PULSE")
    try:
        if version == 1:
            idx, counts, off = enc.decode_pulse_batch(data, _TAG.size)
            ticks = None
        else:
            idx, counts, ticks, off = enc.decode_pulse_batch_v2(data, _TAG.size)
    except ValueError as exc:
        raise PayloadError(f"PULSE: {exc}") from None
    _expect_end(data, off, "PULSE")
    return idx, counts, tag, ticks


def encode_pulse_result(r: PulseResult) -> bytes:
    return _PULSE_REPORT.pack(r.devices, r.set_pulses, r.reset_pulses, r.energy_j, r.duration_s, r.clock_s)


def decode_pulse_result(data: bytes) -> PulseResult:
    return PulseResult(*_unpack(_PULSE_REPORT, data, "PULSE reply"))


# ---- READ ------------------------------------------------------------------------
_REGION = struct.Struct("<IIII")


def encode_region(row0: int, col0: int, rows: int, cols: int) -> bytes:
    return _REGION.pack(row0, col0, rows, cols)


def decode_region(data: bytes, what: str = "READ_REGION", offset: int = 0) -> tuple[int, int, int, int]:
    return _unpack(_REGION, data, what, offset)


def encode_cells(flat_sorted: np.ndarray) -> bytes:
    return enc.encode_uvarints(np.array([flat_sorted.size])) + enc.encode_sparse_indices(flat_sorted)


def decode_cells(data: bytes, what: str = "READ_CELLS", offset: int = 0) -> tuple[np.ndarray, int]:
    try:
        (n,), off = enc.decode_uvarints(data, 1, offset)
        idx, off = enc.decode_sparse_indices(data, int(n), off)
    except ValueError as exc:
        raise PayloadError(f"{what}: {exc}") from None
    return idx, off


def encode_codes_u16(codes: np.ndarray) -> bytes:
    return enc.encode_u16(codes)


def decode_codes_u16(data: bytes, count: int, what: str) -> np.ndarray:
    try:
        codes, off = enc.decode_u16(data, count)
    except ValueError as exc:
        raise PayloadError(f"{what}: {exc}") from None
    _expect_end(data, off, what)
    return codes


# ---- VMM -------------------------------------------------------------------------
_VMM = struct.Struct("<IIIIBId")


@dataclass(frozen=True)
class VmmRequest:
    row0: int
    col0: int
    rows: int
    cols: int
    transpose: bool
    dac_codes: np.ndarray  # int8, shape (batch, n_in)
    i_full_scale_a: float

    @property
    def n_in(self) -> int:
        return self.cols if self.transpose else self.rows

    @property
    def n_out(self) -> int:
        return self.rows if self.transpose else self.cols


# Converter codes travel at the converters' own widths from protocol version 4 on (``bits`` given:
# packed two's complement, see protocols.encoding); before it as int8 DAC and int16 ADC codes.

def encode_vmm_request(r: VmmRequest, dac_bits: int | None = None) -> bytes:
    b = r.dac_codes.shape[0]
    codes = r.dac_codes.reshape(-1)
    body = enc.encode_i8(codes) if dac_bits is None else enc.encode_packed(codes, dac_bits, signed=True)
    return _VMM.pack(r.row0, r.col0, r.rows, r.cols, int(r.transpose), b, r.i_full_scale_a) + body


def decode_vmm_request(data: bytes, dac_bits: int | None = None) -> VmmRequest:
    r0, c0, nr, nc, tr, b, ifs = _unpack(_VMM, data, "VMM")
    n_in = nc if tr else nr
    need = b * n_in if dac_bits is None else enc.packed_size(b * n_in, dac_bits)
    if need > len(data) - _VMM.size:
        raise PayloadError(f"VMM: header announces {b}x{n_in} inputs but only {len(data) - _VMM.size} bytes follow")
    try:
        if dac_bits is None:
            codes, off = enc.decode_i8(data, b * n_in, _VMM.size)
        else:
            codes, off = enc.decode_packed(data, b * n_in, dac_bits, True, _VMM.size)
    except ValueError as exc:
        raise PayloadError(f"VMM: {exc}") from None
    _expect_end(data, off, "VMM")
    if not np.isfinite(ifs) or ifs <= 0:
        raise PayloadError("VMM: the ADC full scale must be a positive number of amps")
    return VmmRequest(r0, c0, nr, nc, bool(tr), codes.reshape(b, n_in), ifs)


def encode_vmm_result(codes: np.ndarray, adc_bits: int | None = None) -> bytes:
    flat = codes.reshape(-1)
    return enc.encode_i16(flat) if adc_bits is None else enc.encode_packed(flat, adc_bits, signed=True)


def decode_vmm_result(data: bytes, batch: int, n_out: int, adc_bits: int | None = None) -> np.ndarray:
    try:
        if adc_bits is None:
            codes, off = enc.decode_i16(data, batch * n_out)
        else:
            codes, off = enc.decode_packed(data, batch * n_out, adc_bits, True)
    except ValueError as exc:
        raise PayloadError(f"VMM reply: {exc}") from None
    _expect_end(data, off, "VMM reply")
    return codes.reshape(batch, n_out)


# ---- PROGRAM (write-verify) -------------------------------------------------------
_PROGRAM = struct.Struct("<dIH")
_PROGRAM_RESULT = struct.Struct("<Qd")


def encode_program_request(flat_sorted: np.ndarray, target_codes: np.ndarray, tolerance_s: float, max_iter: int,
                           max_pulses_per_round: int) -> bytes:
    return (_PROGRAM.pack(tolerance_s, max_iter, max_pulses_per_round) + encode_cells(flat_sorted)
            + enc.encode_u16(target_codes))


def decode_program_request(data: bytes) -> tuple[np.ndarray, np.ndarray, float, int, int]:
    tol, max_iter, per_round = _unpack(_PROGRAM, data, "PROGRAM")
    idx, off = decode_cells(data, "PROGRAM", _PROGRAM.size)
    try:
        targets, off = enc.decode_u16(data, idx.size, off)
    except ValueError as exc:
        raise PayloadError(f"PROGRAM: {exc}") from None
    _expect_end(data, off, "PROGRAM")
    return idx, targets, tol, max_iter, per_round


def encode_program_result(achieved_codes: np.ndarray, converged: np.ndarray, iterations: np.ndarray,
                          pulses: int, energy_j: float) -> bytes:
    return (
        _PROGRAM_RESULT.pack(pulses, energy_j)
        + enc.encode_u16(achieved_codes)
        + np.packbits(converged.astype(bool)).tobytes()
        + np.minimum(iterations, 255).astype(np.uint8).tobytes()
    )


def decode_program_result(data: bytes, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
    pulses, energy = _unpack(_PROGRAM_RESULT, data, "PROGRAM reply")
    off = _PROGRAM_RESULT.size
    try:
        codes, off = enc.decode_u16(data, n, off)
    except ValueError as exc:
        raise PayloadError(f"PROGRAM reply: {exc}") from None
    nbits = -(-n // 8)
    if len(data) != off + nbits + n:
        raise PayloadError("PROGRAM reply: wrong length")
    conv = np.unpackbits(np.frombuffer(data, np.uint8, nbits, off))[:n].astype(bool)
    iters = np.frombuffer(data, np.uint8, n, off + nbits).astype(np.int64)
    return codes, conv, iters, int(pulses), float(energy)


# ---- CLOCK / WAIT --------------------------------------------------------------------
_F64 = struct.Struct("<d")


def encode_f64(x: float) -> bytes:
    return _F64.pack(x)


def decode_f64(data: bytes, what: str) -> float:
    (x,) = _unpack(_F64, data, what)
    _expect_end(data, _F64.size, what)
    return x


# ---- FORM and IV_SWEEP (characterization) ------------------------------------------------
_FORM = struct.Struct("<ddd")
_IV = struct.Struct("<ddI")


def encode_form_request(flat_sorted: np.ndarray, voltage_v: float, width_s: float, compliance_a: float) -> bytes:
    return _FORM.pack(voltage_v, width_s, compliance_a) + encode_cells(flat_sorted)


def decode_form_request(data: bytes) -> tuple[np.ndarray, float, float, float]:
    v, w, icc = _unpack(_FORM, data, "FORM")
    idx, off = decode_cells(data, "FORM", _FORM.size)
    _expect_end(data, off, "FORM")
    return idx, v, w, icc


def encode_form_result(formed: np.ndarray, g_codes: np.ndarray) -> bytes:
    return np.packbits(formed.astype(bool)).tobytes() + enc.encode_u16(g_codes)


def decode_form_result(data: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
    nbits = -(-n // 8)
    formed = np.unpackbits(np.frombuffer(data, np.uint8, min(nbits, len(data))))[:n].astype(bool)
    codes = decode_codes_u16(data[nbits:], n, "FORM reply")
    return formed, codes


def encode_iv_request(flat_sorted: np.ndarray, voltages_v: np.ndarray, step_s: float, compliance_a: float) -> bytes:
    return _IV.pack(step_s, compliance_a, voltages_v.size) + enc.encode_f64(voltages_v) + encode_cells(flat_sorted)


def decode_iv_request(data: bytes) -> tuple[np.ndarray, np.ndarray, float, float]:
    step, icc, n_v = _unpack(_IV, data, "IV_SWEEP")
    if 8 * n_v > len(data):
        raise PayloadError("IV_SWEEP: voltage count exceeds the payload")
    try:
        volts, off = enc.decode_f64(data, n_v, _IV.size)
    except ValueError as exc:
        raise PayloadError(f"IV_SWEEP: {exc}") from None
    idx, off = decode_cells(data, "IV_SWEEP", off)
    _expect_end(data, off, "IV_SWEEP")
    return idx, volts, step, icc


def decode_iv_result(data: bytes, n_cells: int, n_v: int) -> np.ndarray:
    try:
        cur, off = enc.decode_f64(data, n_cells * n_v)
    except ValueError as exc:
        raise PayloadError(f"IV_SWEEP reply: {exc}") from None
    _expect_end(data, off, "IV_SWEEP reply")
    return cur.reshape(n_cells, n_v)
