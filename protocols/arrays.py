"""Fixed-width little-endian arrays, bit-packed converter codes and quantisation (formats in
:mod:`protocols.encoding`)."""

from __future__ import annotations

import numpy as np

from protocols.buffers import (
    Buffer,
    DecodeError,
    as_index,
    as_int_array,
    as_u8,
    check_offset,
)


def _encode_fixed_int(codes, wire: str, name: str) -> bytes:
    arr = as_int_array(codes, name)
    wdt = np.dtype(wire)
    if arr.size and arr.dtype != wdt.newbyteorder("="):
        info = np.iinfo(wdt)
        lo, hi = arr.min(), arr.max()
        if int(lo) < info.min or int(hi) > info.max:
            raise ValueError(
                f"{name} out of range for {wdt.name}: [{int(lo)}, {int(hi)}] "
                f"not within [{info.min}, {info.max}]"
            )
    return arr.astype(wdt, copy=False).tobytes()


def _decode_fixed(data: Buffer, count: int, offset: int, wire: str) -> tuple[np.ndarray, int]:
    buf = as_u8(data)
    count = as_index(count, "count")
    offset = check_offset(buf, offset)
    wdt = np.dtype(wire)
    nbytes = count * wdt.itemsize
    if nbytes > buf.size - offset:
        raise DecodeError(
            f"truncated {wdt.name} array: need {count} x {wdt.itemsize} = {nbytes} bytes "
            f"at offset {offset}, only {buf.size - offset} left"
        )
    raw = buf[offset : offset + nbytes].view(wdt)
    return raw.astype(wdt.newbyteorder("=")), offset + nbytes


def encode_u16(codes: np.ndarray) -> bytes:
    """Little-endian uint16 array (2 bytes per element, no header)."""
    return _encode_fixed_int(codes, "<u2", "codes")


def decode_u16(data: Buffer, count: int, offset: int = 0) -> tuple[np.ndarray, int]:
    """Decode ``count`` little-endian uint16 -> ``(uint16 array, new_offset)``."""
    return _decode_fixed(data, count, offset, "<u2")


def encode_i16(codes: np.ndarray) -> bytes:
    """Little-endian int16 array (2 bytes per element, two's complement)."""
    return _encode_fixed_int(codes, "<i2", "codes")


def decode_i16(data: Buffer, count: int, offset: int = 0) -> tuple[np.ndarray, int]:
    """Decode ``count`` little-endian int16 -> ``(int16 array, new_offset)``."""
    return _decode_fixed(data, count, offset, "<i2")


def encode_i8(codes: np.ndarray) -> bytes:
    """int8 array (1 byte per element, two's complement)."""
    return _encode_fixed_int(codes, "i1", "codes")


def decode_i8(data: Buffer, count: int, offset: int = 0) -> tuple[np.ndarray, int]:
    """Decode ``count`` int8 -> ``(int8 array, new_offset)``."""
    return _decode_fixed(data, count, offset, "i1")


def encode_f64(values: np.ndarray) -> bytes:
    """Little-endian IEEE-754 binary64 array (8 bytes per element)."""
    arr = np.asarray(values)
    if arr.size and arr.dtype.kind not in "fiu":
        raise TypeError(f"values must be a real numeric array, got dtype {arr.dtype}")
    return arr.reshape(-1).astype("<f8", copy=False).tobytes()


def decode_f64(data: Buffer, count: int, offset: int = 0) -> tuple[np.ndarray, int]:
    """Decode ``count`` little-endian float64 -> ``(float64 array, new_offset)``."""
    return _decode_fixed(data, count, offset, "<f8")


def _code_range(bits: int, signed: bool) -> tuple[int, int]:
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be within 1..32, got {bits}")
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits take when packed."""
    return (count * bits + 7) // 8


def encode_packed(codes: np.ndarray, bits: int, signed: bool) -> bytes:
    """Codes in ``bits`` bits each, LSB first, back to back (see the module docstring)."""
    arr = as_int_array(codes, "codes").reshape(-1)
    lo, hi = _code_range(bits, signed)
    if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
        raise ValueError(f"codes out of range for {bits}-bit {'signed' if signed else 'unsigned'}: "
                         f"[{int(arr.min())}, {int(arr.max())}] not within [{lo}, {hi}]")
    u = arr.astype(np.int64) & ((1 << bits) - 1)
    bit_planes = ((u[:, None] >> np.arange(bits, dtype=np.int64)) & 1).astype(np.uint8)
    return np.packbits(bit_planes.reshape(-1), bitorder="little").tobytes()


def decode_packed(data: Buffer, count: int, bits: int, signed: bool, offset: int = 0) -> tuple[np.ndarray, int]:
    """Decode ``count`` codes of ``bits`` bits -> ``(int64 array, new_offset)``."""
    _code_range(bits, signed)
    buf = as_u8(data)
    count = as_index(count, "count")
    offset = check_offset(buf, offset)
    nbytes = packed_size(count, bits)
    if nbytes > buf.size - offset:
        raise DecodeError(f"truncated {bits}-bit packed codes: need {count} codes = {nbytes} bytes "
                          f"at offset {offset}, only {buf.size - offset} left")
    planes = np.unpackbits(buf[offset:offset + nbytes], bitorder="little")
    if planes[count * bits:].any():
        raise DecodeError(f"{bits}-bit packed codes: the padding bits of the last byte must be zero")
    planes = planes[:count * bits].reshape(count, bits).astype(np.int64)
    u = planes @ (np.int64(1) << np.arange(bits, dtype=np.int64)) if count else np.zeros(0, np.int64)
    if signed:
        u = u - ((u >> (bits - 1)) & 1) * (1 << bits)
    return u, offset + nbytes


def _code_dtype(bits: int, signed: bool) -> np.dtype:
    for size in (8, 16, 32, 64):
        if bits <= size:
            return np.dtype(f"{'i' if signed else 'u'}{size // 8}")
    raise AssertionError("unreachable")


def quantize(values, lsb: float, bits: int, signed: bool) -> np.ndarray:
    """Round ``values / lsb`` to the nearest integer code, saturating.

    Code range: ``0 .. 2**bits - 1`` (unsigned) or
    ``-2**(bits-1) .. 2**(bits-1) - 1`` (signed); ``1 <= bits <= 32``.
    Ties round to even.  +-inf saturate; NaN raises ``ValueError``.
    Returns the smallest integer dtype that holds the code range, same shape
    as ``values``.
    """
    bits = as_index(bits, "bits")
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in 1..32, got {bits}")
    lsb = float(lsb)
    if not (np.isfinite(lsb) and lsb > 0):
        raise ValueError(f"lsb must be a positive finite number, got {lsb!r}")
    v = np.asarray(values, dtype=np.float64)
    if np.isnan(v).any():
        raise ValueError("cannot quantize NaN")
    if signed:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1
    with np.errstate(over="ignore"):
        q = np.rint(v / lsb)
    np.clip(q, lo, hi, out=q)
    return q.astype(_code_dtype(bits, bool(signed)))


def dequantize(codes, lsb: float) -> np.ndarray:
    """Inverse of :func:`quantize` (up to rounding): ``codes * lsb`` as float64."""
    return np.asarray(codes).astype(np.float64) * float(lsb)
