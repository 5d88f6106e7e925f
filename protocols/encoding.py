"""Compact, vectorised payload encodings for the FPGA wire protocol.

This module is *sans-I/O*: every function maps numpy arrays to ``bytes`` or
``bytes``-like buffers back to numpy arrays.  There are no sockets, clocks or
global state.  All work is done with whole-array numpy operations; the only
Python-level loops run over byte *positions* inside a varint (at most 10),
never over elements.

Conventions shared by every decoder
-----------------------------------
* ``data`` may be ``bytes``, ``bytearray``, ``memoryview`` or any C-contiguous
  object exporting the buffer protocol; it is read as raw octets.
* ``offset`` is the index of the first byte to read.  Every decoder returns the
  offset *just after* the last byte it consumed, so payloads can be
  concatenated and decoded back to back::

      vals, off = decode_uvarints(buf, 3)
      idx, cnt, off = decode_pulse_batch(buf, off)

* Malformed, truncated or otherwise invalid input raises :class:`DecodeError`,
  a subclass of :class:`ValueError`.  No other exception type escapes a
  decoder for any content of ``data`` (bad *argument types* still raise
  ``TypeError``).  Work is bounded by ``len(data)``; a decoder never allocates
  more than O(len(data)) memory, even when a length prefix claims otherwise.
* Decoded arrays are fresh, writable copies in native byte order; they never
  alias ``data``.

Formats
-------

uvarint (unsigned LEB128)
    A non-negative integer ``v < 2**64`` is split into 7-bit groups, least
    significant group first.  Each group is stored in one byte: bits 0-6 hold
    the group, bit 7 (``0x80``) is the *continuation* flag, set on every byte
    except the last.  Examples::

        0       -> 00
        1       -> 01
        127     -> 7f
        128     -> 80 01
        300     -> ac 02
        16383   -> ff 7f
        16384   -> 80 80 01
        2**35   -> 80 80 80 80 80 01
        2**64-1 -> ff ff ff ff ff ff ff ff ff 01

    A value needs ``max(1, ceil(bit_length(v) / 7))`` bytes (1..10).  Only the
    canonical (shortest) form is accepted by the decoder: a multi-byte varint
    whose final byte is ``0x00`` is rejected as *overlong*, as is any varint
    longer than 10 bytes or a 10-byte varint whose final byte exceeds ``0x01``
    (value would not fit in 64 bits).  A stream of varints is simply their
    concatenation with no separator and no count; the count is known from
    context (e.g. a preceding uvarint).

zigzag
    Maps signed ``int64`` to unsigned ``uint64`` so that small magnitudes get
    small codes: ``z = (n << 1) ^ (n >> 63)`` (arithmetic shift), i.e.
    ``0->0, -1->1, 1->2, -2->3, 2->4, ...``; inverse ``n = (z >> 1) ^ -(z & 1)``.
    Defined on the full ``int64`` range.

sparse indices (``encode_sparse_indices``)
    A strictly increasing sequence of non-negative ``int64`` indices
    ``i[0] < i[1] < ... < i[n-1]`` is stored as ``n`` uvarint *gaps*::

        g[0] = i[0]
        g[k] = i[k] - i[k-1] - 1        (k >= 1, always >= 0)

    The count ``n`` is *not* stored; callers pass it to the decoder.  The
    ``-1`` makes adjacent indices cost a zero gap.  Dense runs (gap < 128)
    cost exactly 1 byte per index, gaps < 16384 cost 2 bytes.

pulse batch (``encode_pulse_batch``)
    Programming-pulse request for a set of devices addressed by flat
    (row-major) index::

        uvarint  N                       number of written devices
        N x uvarint  gap                 sparse-index gaps, as above
        N x uvarint  zigzag(count)       signed pulse counts

    ``count`` is a non-zero integer: ``count > 0`` means ``count`` SET
    (potentiation) pulses, ``count < 0`` means ``-count`` RESET (depression)
    pulses.  Zero counts are rejected by both encoder and decoder (a device
    with nothing to do must simply be omitted).  Counts in ``-64..63`` cost
    one byte.  All index gaps precede all counts (struct-of-arrays), which
    keeps both halves contiguous for vectorised decoding.  Typical sizes for a
    1024x1024 crossbar with counts in +-1..+-3 (see ``tests/test_encoding.py``):
    ~2.9 B/device at 0.1 % density and ~2.0 B/device at 10 % density.

pulse batch with widths, protocol version 2 (``encode_pulse_batch_v2``)
    The version-1 pulse batch, preceded by a flag byte and optionally followed
    by the width of each device's last pulse::

        u8       flags                   bit 0: the width field follows;
                                         bits 1-7 reserved, must be 0
        uvarint  N | N gaps | N zigzag(count)      as in version 1
        [bit 0]  N x uvarint  ticks      width of each device's LAST pulse in
                                         units of the board's timing resolution
                                         (HELLO ``timing_resolution_s``);
                                         0 = the full profile width

    A device's last pulse is a width-modulated partial pulse when its ticks
    are non-zero; its other ``|count| - 1`` pulses have the profile's width.
    The encoder leaves the field out (flags 0, one byte of overhead) when
    every tick is 0.  With a 1 ns resolution a partial pulse below 128 ns
    costs one byte per written device.  Decoders of version-1 payloads use
    ``decode_pulse_batch``; the version is the frame header's.

fixed-width little-endian arrays
    ``encode_u16`` / ``encode_i16`` / ``encode_i8`` / ``encode_f64`` write the
    raw element bytes in little-endian order (``<u2``, ``<i2``, ``i1``,
    ``<f8``, IEEE-754 binary64), ``count`` elements back to back, no header.
    A full-array conductance read of 1024x1024 ``uint16`` codes is therefore
    exactly 2 bytes per device.  The encoders reject (``ValueError``) integer
    values outside the target type's range instead of wrapping, and reject
    non-integer arrays for the integer formats (``TypeError``).

bit-packed codes
    ``encode_packed(codes, bits, signed)`` writes each code in exactly
    ``bits`` bits (two's complement when ``signed``), least significant bit
    first, codes back to back with no padding between them; the last byte is
    padded with zero bits, so ``count`` codes take ``ceil(count * bits / 8)``
    bytes.  A 10-bit ADC code costs 1.25 bytes instead of an int16's 2.  The
    decoder rejects non-zero padding bits, so every code sequence has exactly
    one encoding.  Codes outside the ``bits``-bit range raise ``ValueError``.

quantize / dequantize
    ``quantize(values, lsb, bits, signed)`` returns
    ``clip(rint(values / lsb), lo, hi)`` with ``lo, hi = 0, 2**bits - 1``
    (unsigned) or ``-2**(bits-1), 2**(bits-1) - 1`` (signed).  Rounding is to
    the nearest integer, ties to even (IEEE ``rint``).  Out-of-range values,
    including +-inf, saturate; NaN raises ``ValueError``.  The result dtype is
    the smallest numpy integer type holding the code range (e.g. ``bits=16,
    signed=False -> uint16``; ``bits=12, signed=True -> int16``).
    ``dequantize(codes, lsb)`` returns ``codes * lsb`` as ``float64``.
"""

from __future__ import annotations

import operator
from typing import Union

import numpy as np

__all__ = [
    "DecodeError",
    "MAX_UVARINT_BYTES",
    "encode_uvarints",
    "decode_uvarints",
    "zigzag_encode",
    "zigzag_decode",
    "encode_sparse_indices",
    "decode_sparse_indices",
    "encode_pulse_batch",
    "decode_pulse_batch",
    "encode_pulse_batch_v2",
    "decode_pulse_batch_v2",
    "PULSE_FLAG_WIDTHS",
    "encode_u16",
    "decode_u16",
    "encode_i16",
    "decode_i16",
    "encode_i8",
    "decode_i8",
    "encode_f64",
    "decode_f64",
    "encode_packed",
    "decode_packed",
    "packed_size",
    "quantize",
    "dequantize",
]

Buffer = Union[bytes, bytearray, memoryview]

#: Longest canonical uvarint (a 64-bit value needs ceil(64 / 7) = 10 bytes).
MAX_UVARINT_BYTES = 10

_I64_MAX = np.iinfo(np.int64).max
_U64 = np.uint64


class DecodeError(ValueError):
    """Raised when a buffer does not hold a valid encoding."""


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _as_u8(data: Buffer) -> np.ndarray:
    """Read-only uint8 view of a buffer (no copy)."""
    if isinstance(data, np.ndarray):
        if not data.flags.c_contiguous:
            raise TypeError("data array must be C-contiguous")
        return data.reshape(-1).view(np.uint8)
    try:
        mv = memoryview(data)
    except TypeError:
        raise TypeError(f"data must be a bytes-like object, got {type(data).__name__}") from None
    if not mv.c_contiguous:
        raise TypeError("data buffer must be C-contiguous")
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return np.frombuffer(mv, dtype=np.uint8)


def _check_offset(buf: np.ndarray, offset: int) -> int:
    offset = _as_index(offset, "offset")
    if offset > buf.size:
        raise DecodeError(f"offset {offset} is past the end of the {buf.size}-byte buffer")
    return offset


def _as_index(value: int, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)  # int or numpy integer; rejects floats
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _as_int_array(a, name: str) -> np.ndarray:
    """Flatten to a 1-D integer array; empty input of any dtype is allowed."""
    arr = np.asarray(a)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr.reshape(-1)


def _to_u64_nonneg(a, name: str) -> np.ndarray:
    arr = _as_int_array(a, name)
    if arr.dtype.kind == "i":
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name} must be non-negative (min is {int(arr.min())})")
    return arr.astype(np.uint64, copy=False)


# --------------------------------------------------------------------------
# uvarints
# --------------------------------------------------------------------------


def _narrow_uint(maxlen: int) -> np.dtype:
    """Smallest unsigned dtype holding any ``maxlen``-byte uvarint."""
    if maxlen <= 1:
        return np.dtype(np.uint8)
    if maxlen <= 2:
        return np.dtype(np.uint16)
    if maxlen <= 4:
        return np.dtype(np.uint32)
    return np.dtype(np.uint64)


def _encode_raw(v: np.ndarray) -> bytes:
    """Encode a 1-D *unsigned* integer array as concatenated canonical uvarints.

    Exception patching: every value first gets its low 8 bits as a single
    byte (two O(n) passes over narrow data), then only the values >= 128
    ("multi-byte" varints, typically rare) are fixed up and their extra bytes
    spliced in.  Cost is O(n) plus O(#multi-byte values * their length).
    """
    n = v.size
    if n == 0:
        return b""
    first = v.astype(np.uint8)  # low 8 bits; exact for v < 128
    sub = np.flatnonzero(v > 0x7F)
    if sub.size == 0:
        return first.tobytes()
    vs = v[sub].astype(np.uint64, copy=False)
    maxlen = (int(vs.max()).bit_length() + 6) // 7
    ls = np.full(sub.size, 2, dtype=np.intp)  # every vs >= 128 needs >= 2 bytes
    for k in range(2, maxlen):
        ls += vs >= _U64(1 << (7 * k))
    extra = ls - 1
    cum = np.cumsum(extra)
    starts = sub + (cum - extra)  # output position of each multi-byte varint
    total = n + int(cum[-1])
    first[sub] = (vs & _U64(0x7F)).astype(np.uint8) | np.uint8(0x80)
    out = np.empty(total, dtype=np.uint8)
    is_first = np.ones(total, dtype=bool)
    rows = np.arange(sub.size)
    for k in range(1, maxlen):
        pos = starts[rows] + k
        is_first[pos] = False
        byte = ((vs[rows] >> _U64(7 * k)) & _U64(0x7F)).astype(np.uint8)
        more = ls[rows] > k + 1
        byte |= more.view(np.uint8) << np.uint8(7)
        out[pos] = byte
        rows = rows[more]
    out[is_first] = first
    return out.tobytes()


def encode_uvarints(values: np.ndarray) -> bytes:
    """Encode non-negative integers (< 2**64) as concatenated LEB128 uvarints.

    ``values`` may have any shape (it is flattened, C order) and any integer
    dtype.  Raises ``ValueError`` on negative values, ``TypeError`` on
    non-integer dtypes.
    """
    return _encode_raw(_to_u64_nonneg(values, "values"))


def _group_runs(cidx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sorted varint indices of continuation bytes: run starts and lengths."""
    new = np.empty(cidx.size, dtype=bool)
    new[:1] = True
    np.not_equal(cidx[1:], cidx[:-1], out=new[1:])
    gstart = np.flatnonzero(new)
    ncont = np.diff(gstart, append=cidx.size)
    return gstart, ncont


def _decode_raw(buf: np.ndarray, count: int, offset: int) -> tuple[np.ndarray, int]:
    """Decode ``count`` uvarints from uint8 array ``buf`` at ``offset``.

    Returns ``(values, new_offset)``; ``values`` has the smallest unsigned
    dtype that holds the longest varint present (``uint8`` when all are single
    bytes, then ``uint16`` / ``uint32`` / ``uint64``).

    Only continuation bytes (``>= 0x80``) are located explicitly; if ``cpos``
    are their positions, ``c = cpos - arange(len(cpos))`` is the index of the
    varint each belongs to, so everything about the multi-byte varints is
    computed in O(#continuation bytes), and single-byte varints cost two cheap
    O(n) passes.  The scanned window starts at ~``count`` bytes and grows
    geometrically up to ``10 * count``, so work is O(bytes consumed), never
    O(rest of buffer).
    """
    if count == 0:
        return np.zeros(0, dtype=np.uint8), offset
    avail = buf.size - offset
    if count > avail:
        raise DecodeError(
            f"truncated uvarint stream: need {count} varints (at least {count} bytes) "
            f"at offset {offset}, only {avail} bytes left"
        )
    head = buf[offset : offset + count]
    if head.max() < 0x80:  # fast path: `count` single-byte varints
        return head.copy(), offset + count

    limit = min(MAX_UVARINT_BYTES * count, avail)
    w = min(limit, count + (count >> 3) + 16)
    while True:
        cont = buf[offset : offset + w] > 0x7F
        cpos = np.flatnonzero(cont)
        cidx = cpos - np.arange(cpos.size)  # varint index of each continuation byte
        ncont = int(np.searchsorted(cidx, count, side="left"))
        stop = count + ncont  # bytes used by the first `count` varints
        if stop <= w:
            break
        if w == limit:
            _raise_incomplete(cidx, cpos, count, offset, w, avail)
        # estimate the bytes needed from the density seen so far, grow >= 2x
        per = w / max(w - cpos.size, 1)
        w = min(limit, max(2 * w, int(count * per) + 16))

    window = buf[offset : offset + stop]
    last = window[~cont[:stop]]  # terminating (most significant) byte of each varint
    cidx = cidx[:ncont]
    cpos = cpos[:ncont]
    gstart, nc = _group_runs(cidx)
    gidx = cidx[gstart]  # indices of the multi-byte varints
    if nc.max() >= MAX_UVARINT_BYTES:
        k = int(np.argmax(nc >= MAX_UVARINT_BYTES))
        raise DecodeError(
            f"overlong uvarint #{int(gidx[k])} at offset {offset + int(cpos[gstart[k]])}: "
            f"more than {MAX_UVARINT_BYTES} bytes"
        )
    lastm = last[gidx]
    bad = lastm == 0
    if bad.any():
        k = int(np.argmax(bad))
        raise DecodeError(
            f"non-canonical (overlong) uvarint #{int(gidx[k])} at offset "
            f"{offset + int(cpos[gstart[k]])}: trailing zero byte"
        )
    maxlen = int(nc.max()) + 1
    if maxlen == MAX_UVARINT_BYTES:
        bad = (nc == MAX_UVARINT_BYTES - 1) & (lastm > 1)
        if bad.any():
            k = int(np.argmax(bad))
            raise DecodeError(
                f"uvarint #{int(gidx[k])} at offset {offset + int(cpos[gstart[k]])} "
                "overflows 64 bits"
            )
    # value = sum over its continuation bytes of (b & 0x7f) << 7*j, plus the
    # terminating byte << 7*ncont
    shift = (cpos - np.repeat(cpos[gstart], nc)) * 7
    low = (window[cpos] & np.uint8(0x7F)).astype(np.uint64) << shift.astype(np.uint64)
    valm = np.bitwise_or.reduceat(low, gstart)
    valm |= lastm.astype(np.uint64) << (nc * 7).astype(np.uint64)
    vals = last.astype(_narrow_uint(maxlen))
    vals[gidx] = valm
    return vals, offset + stop


def _raise_incomplete(cidx, cpos, count, offset, w, avail) -> None:
    """Diagnose why ``count`` varints are not complete within ``w`` bytes."""
    if cidx.size:
        gstart, nc = _group_runs(cidx)
        if nc.max() >= MAX_UVARINT_BYTES:
            k = int(np.argmax(nc >= MAX_UVARINT_BYTES))
            raise DecodeError(
                f"overlong uvarint #{int(cidx[gstart[k]])} at offset "
                f"{offset + int(cpos[gstart[k]])}: more than {MAX_UVARINT_BYTES} bytes"
            )
    if w < avail:  # pigeonhole: 10*count bytes hold < count varints
        raise DecodeError(f"overlong uvarint in stream at offset {offset}")
    found = w - cpos.size  # every non-continuation byte ends a complete varint
    raise DecodeError(
        f"truncated uvarint stream: expected {count} varints at offset {offset}, "
        f"found only {found} complete before the end of the data"
    )


def decode_uvarints(
    data: Buffer, count: int, offset: int = 0, *, dtype=np.int64
) -> tuple[np.ndarray, int]:
    """Decode exactly ``count`` uvarints starting at ``data[offset]``.

    Returns ``(values, new_offset)``.  ``values`` is ``int64`` by default
    (a value >= 2**63 then raises :class:`DecodeError`); pass
    ``dtype=np.uint64`` to accept the full 64-bit range.  Raises
    :class:`DecodeError` (a ``ValueError``) if the data ends before ``count``
    varints are complete, or on a non-canonical / over-long / >64-bit varint.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.int64), np.dtype(np.uint64)):
        raise TypeError(f"dtype must be int64 or uint64, got {dtype}")
    buf = _as_u8(data)
    count = _as_index(count, "count")
    offset = _check_offset(buf, offset)
    vals, end = _decode_raw(buf, count, offset)
    if dtype == np.int64 and vals.dtype == np.uint64 and vals.max() > _U64(_I64_MAX):
        k = int(np.argmax(vals > _U64(_I64_MAX)))
        raise DecodeError(
            f"uvarint #{k} = {int(vals[k])} does not fit in int64 "
            "(use dtype=np.uint64 for the full range)"
        )
    return vals.astype(dtype), end


# --------------------------------------------------------------------------
# zigzag
# --------------------------------------------------------------------------


def _zigzag(c: np.ndarray) -> np.ndarray:
    """Zigzag in the input's own width: intN -> uintN (uint input -> via int64)."""
    if c.dtype.kind == "u":
        if c.size and c.max() > _I64_MAX:
            raise ValueError("zigzag input does not fit in int64")
        c = c.astype(np.int64)
    bits = c.dtype.itemsize * 8
    z = c << c.dtype.type(1)
    z ^= c >> c.dtype.type(bits - 1)
    return z.view(f"u{c.dtype.itemsize}")


def _unzigzag(u: np.ndarray) -> np.ndarray:
    """Inverse zigzag in the input's own width: uintN -> int64."""
    t = u.dtype.type
    s = u & t(1)
    np.negative(s, out=s)  # 0 or all-ones (unsigned wrap-around)
    s ^= u >> t(1)
    return s.view(f"i{u.dtype.itemsize}").astype(np.int64, copy=False)


def zigzag_encode(a) -> np.ndarray:
    """Map signed integers to uint64: 0,-1,1,-2,2,... -> 0,1,2,3,4,...

    ``z = (n << 1) ^ (n >> 63)``; defined on the full int64 range.  Same
    shape as ``a``.
    """
    arr = _as_int_array(a, "a")
    if arr.dtype.kind == "u" and arr.size and arr.max() > _I64_MAX:
        raise ValueError("zigzag_encode input does not fit in int64")
    return _zigzag(arr.astype(np.int64, copy=False)).reshape(np.shape(a))


def zigzag_decode(a) -> np.ndarray:
    """Inverse of :func:`zigzag_encode`: uint64 (or any non-negative ints) -> int64."""
    arr = _as_int_array(a, "a")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise ValueError("zigzag_decode input must be non-negative")
    return _unzigzag(arr.astype(np.uint64, copy=False)).reshape(np.shape(a))


# --------------------------------------------------------------------------
# sparse indices
# --------------------------------------------------------------------------


def _index_gaps(flat_idx) -> np.ndarray:
    """Gaps g[0] = i[0], g[k] = i[k] - i[k-1] - 1 as uint64 (validated)."""
    idx = _as_int_array(flat_idx, "flat_idx")
    n = idx.size
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    if idx.dtype == np.uint64 and idx.max() > _I64_MAX:
        raise ValueError("flat_idx values must fit in int64")
    idx = idx.astype(np.int64, copy=False)
    gaps = np.empty(n, dtype=np.int64)
    gaps[0] = idx[0]
    np.subtract(idx[1:], idx[:-1], out=gaps[1:])
    gaps[1:] -= 1  # adjacent-difference >= 1 for valid input: no overflow
    if gaps.min() < 0:
        if idx[0] < 0:
            raise ValueError(f"flat_idx must be non-negative (first index is {int(idx[0])})")
        k = int(np.argmax(idx[1:] <= idx[:-1]))
        raise ValueError(
            "flat_idx must be strictly increasing (no duplicates): "
            f"flat_idx[{k}]={int(idx[k])} >= flat_idx[{k + 1}]={int(idx[k + 1])}"
        )
    return gaps.view(np.uint64)


def _gaps_to_index(gaps: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_index_gaps` with overflow checking (unsigned in)."""
    n = gaps.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if gaps.dtype.itemsize <= 4:
        # narrow fast path: gaps < 2**28 so g + 1 fits the dtype, and
        # n * 2**28 cannot overflow int64 for any buffer that fits in memory
        steps = gaps + gaps.dtype.type(1)
        steps[0] = gaps[0]
        return np.cumsum(steps, dtype=np.int64)
    gaps = gaps.astype(np.uint64, copy=False)
    # i[k] = sum(g[:k+1]) + k.  Cannot exceed int64 if every gap is below
    # (2**63 - 1) // (n + 1) (fast path); otherwise check exactly.
    gmax = gaps.max()
    if gmax <= _U64(_I64_MAX // (n + 1)):
        steps = gaps.astype(np.int64)
        steps[1:] += 1
        return np.cumsum(steps)
    if gmax > _U64(_I64_MAX):
        raise DecodeError("sparse index gap does not fit in int64")
    steps = gaps.copy()
    steps[1:] += _U64(1)  # each step <= 2**63: no wrap
    cs = np.cumsum(steps)
    # a uint64 wrap-around shows up as a decrease of the running sum
    if (n > 1 and np.any(cs[1:] < cs[:-1])) or cs[-1] > _U64(_I64_MAX):
        raise DecodeError("sparse indices overflow int64")
    return cs.astype(np.int64)


def encode_sparse_indices(flat_idx: np.ndarray) -> bytes:
    """Encode strictly increasing non-negative indices as uvarint gaps.

    Raises ``ValueError`` if the indices are negative or not strictly
    increasing (unsorted or duplicated).  The count is not stored.
    """
    return _encode_raw(_index_gaps(flat_idx))


def decode_sparse_indices(
    data: Buffer, count: int, offset: int = 0
) -> tuple[np.ndarray, int]:
    """Decode ``count`` gap-coded indices -> ``(int64 indices, new_offset)``."""
    buf = _as_u8(data)
    count = _as_index(count, "count")
    offset = _check_offset(buf, offset)
    gaps, end = _decode_raw(buf, count, offset)
    return _gaps_to_index(gaps), end


# --------------------------------------------------------------------------
# pulse batch
# --------------------------------------------------------------------------


def encode_pulse_batch(flat_idx: np.ndarray, counts: np.ndarray) -> bytes:
    """Encode a programming-pulse batch: ``uvarint N | N gaps | N zigzag counts``.

    ``flat_idx``: strictly increasing non-negative flat device indices.
    ``counts``: same length, non-zero signed pulse counts (+SET / -RESET).
    """
    gaps = _index_gaps(flat_idx)
    c = _as_int_array(counts, "counts")
    if c.size != gaps.size:
        raise ValueError(
            f"flat_idx and counts must have the same length ({gaps.size} != {c.size})"
        )
    if c.size and not np.all(c):
        k = int(np.argmax(c == 0))
        raise ValueError(f"counts must be non-zero (counts[{k}] == 0)")
    n = gaps.size
    header = _encode_raw(np.array([n], dtype=np.uint64))
    if n == 0:
        return header
    return b"".join((header, _encode_raw(gaps), _encode_raw(_zigzag(c))))


def decode_pulse_batch(
    data: Buffer, offset: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """Decode a pulse batch -> ``(flat_idx int64, counts int64, new_offset)``.

    Raises :class:`DecodeError` if the batch is truncated, a varint is
    malformed, a count is zero or an index overflows int64.
    """
    buf = _as_u8(data)
    offset = _check_offset(buf, offset)
    nv, pos = _decode_raw(buf, 1, offset)
    n = int(nv[0])
    # every entry needs >= 2 bytes; reject absurd N before allocating anything
    if 2 * n > buf.size - pos:
        raise DecodeError(
            f"truncated pulse batch: header claims {n} devices (>= {2 * n} bytes) "
            f"but only {buf.size - pos} bytes follow"
        )
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), pos
    gaps, pos = _decode_raw(buf, n, pos)
    z, end = _decode_raw(buf, n, pos)
    if z.min() == 0:
        k = int(np.argmax(z == 0))
        raise DecodeError(f"pulse batch count #{k} is zero")
    return _gaps_to_index(gaps), _unzigzag(z), end


#: Flag bit of a version-2 pulse batch: a per-device last-pulse width field follows.
PULSE_FLAG_WIDTHS = 0x01


def encode_pulse_batch_v2(
    flat_idx: np.ndarray, counts: np.ndarray, last_width_ticks: np.ndarray | None = None
) -> bytes:
    """Encode a version-2 pulse batch: ``u8 flags | v1 batch | [N uvarint ticks]``.

    ``last_width_ticks``: None, or one non-negative integer per device (0 = full
    profile width); all-zero ticks are left out like None.
    """
    body = encode_pulse_batch(flat_idx, counts)
    if last_width_ticks is None:
        return bytes([0]) + body
    ticks = _to_u64_nonneg(last_width_ticks, "last_width_ticks")
    n = _as_int_array(counts, "counts").size
    if ticks.size != n:
        raise ValueError(f"last_width_ticks must have one entry per device ({ticks.size} != {n})")
    if not ticks.any():
        return bytes([0]) + body
    return b"".join((bytes([PULSE_FLAG_WIDTHS]), body, _encode_raw(ticks)))


def decode_pulse_batch_v2(
    data: Buffer, offset: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Decode a version-2 pulse batch -> ``(flat_idx, counts, ticks or None, new_offset)``.

    ``ticks`` is ``int64`` (0 = full width) or None when the batch has no width
    field.  Raises :class:`DecodeError` on reserved flag bits or any error of
    the version-1 part or of the width field.
    """
    buf = _as_u8(data)
    offset = _check_offset(buf, offset)
    if offset >= buf.size:
        raise DecodeError("truncated pulse batch: the flag byte is missing")
    flags = int(buf[offset])
    if flags & ~PULSE_FLAG_WIDTHS:
        raise DecodeError(f"pulse batch flags 0x{flags:02x} set reserved bits (only 0x01 is defined)")
    idx, counts, pos = decode_pulse_batch(buf, offset + 1)
    if not flags & PULSE_FLAG_WIDTHS:
        return idx, counts, None, pos
    ticks, end = _decode_raw(buf, idx.size, pos)
    if ticks.dtype == np.uint64 and ticks.size and ticks.max() > _U64(_I64_MAX):
        raise DecodeError("pulse width ticks do not fit in int64")
    return idx, counts, ticks.astype(np.int64), end


# --------------------------------------------------------------------------
# fixed-width little-endian arrays
# --------------------------------------------------------------------------


def _encode_fixed_int(codes, wire: str, name: str) -> bytes:
    arr = _as_int_array(codes, name)
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
    buf = _as_u8(data)
    count = _as_index(count, "count")
    offset = _check_offset(buf, offset)
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
    arr = _as_int_array(codes, "codes").reshape(-1)
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
    buf = _as_u8(data)
    count = _as_index(count, "count")
    offset = _check_offset(buf, offset)
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


# --------------------------------------------------------------------------
# quantisation
# --------------------------------------------------------------------------


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
    bits = _as_index(bits, "bits")
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
