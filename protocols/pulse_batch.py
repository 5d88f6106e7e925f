"""Sparse device indices and pulse batches, versions 1 and 2 (formats in :mod:`protocols.encoding`)."""

from __future__ import annotations

import numpy as np

from protocols.buffers import (
    I64_MAX,
    U64,
    Buffer,
    DecodeError,
    as_index,
    as_int_array,
    as_u8,
    check_offset,
    to_u64_nonneg,
)
from protocols.varint import decode_raw, encode_raw, unzigzag, zigzag


def index_gaps(flat_idx) -> np.ndarray:
    """Gaps g[0] = i[0], g[k] = i[k] - i[k-1] - 1 as uint64 (validated)."""
    idx = as_int_array(flat_idx, "flat_idx")
    n = idx.size
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    if idx.dtype == np.uint64 and idx.max() > I64_MAX:
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


def gaps_to_index(gaps: np.ndarray) -> np.ndarray:
    """Inverse of :func:`index_gaps` with overflow checking (unsigned in)."""
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
    if gmax <= U64(I64_MAX // (n + 1)):
        steps = gaps.astype(np.int64)
        steps[1:] += 1
        return np.cumsum(steps)
    if gmax > U64(I64_MAX):
        raise DecodeError("sparse index gap does not fit in int64")
    steps = gaps.copy()
    steps[1:] += U64(1)  # each step <= 2**63: no wrap
    cs = np.cumsum(steps)
    # a uint64 wrap-around shows up as a decrease of the running sum
    if (n > 1 and np.any(cs[1:] < cs[:-1])) or cs[-1] > U64(I64_MAX):
        raise DecodeError("sparse indices overflow int64")
    return cs.astype(np.int64)


def encode_sparse_indices(flat_idx: np.ndarray) -> bytes:
    """Encode strictly increasing non-negative indices as uvarint gaps.

    Raises ``ValueError`` if the indices are negative or not strictly
    increasing (unsorted or duplicated).  The count is not stored.
    """
    return encode_raw(index_gaps(flat_idx))


def decode_sparse_indices(
    data: Buffer, count: int, offset: int = 0
) -> tuple[np.ndarray, int]:
    """Decode ``count`` gap-coded indices -> ``(int64 indices, new_offset)``."""
    buf = as_u8(data)
    count = as_index(count, "count")
    offset = check_offset(buf, offset)
    gaps, end = decode_raw(buf, count, offset)
    return gaps_to_index(gaps), end


def encode_pulse_batch(flat_idx: np.ndarray, counts: np.ndarray) -> bytes:
    """Encode a programming-pulse batch: ``uvarint N | N gaps | N zigzag counts``.

    ``flat_idx``: strictly increasing non-negative flat device indices.
    ``counts``: same length, non-zero signed pulse counts (+SET / -RESET).
    """
    gaps = index_gaps(flat_idx)
    c = as_int_array(counts, "counts")
    if c.size != gaps.size:
        raise ValueError(
            f"flat_idx and counts must have the same length ({gaps.size} != {c.size})"
        )
    if c.size and not np.all(c):
        k = int(np.argmax(c == 0))
        raise ValueError(f"counts must be non-zero (counts[{k}] == 0)")
    n = gaps.size
    header = encode_raw(np.array([n], dtype=np.uint64))
    if n == 0:
        return header
    return b"".join((header, encode_raw(gaps), encode_raw(zigzag(c))))


def decode_pulse_batch(
    data: Buffer, offset: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """Decode a pulse batch -> ``(flat_idx int64, counts int64, new_offset)``.

    Raises :class:`DecodeError` if the batch is truncated, a varint is
    malformed, a count is zero or an index overflows int64.
    """
    buf = as_u8(data)
    offset = check_offset(buf, offset)
    nv, pos = decode_raw(buf, 1, offset)
    n = int(nv[0])
    # every entry needs >= 2 bytes; reject absurd N before allocating anything
    if 2 * n > buf.size - pos:
        raise DecodeError(
            f"truncated pulse batch: header claims {n} devices (>= {2 * n} bytes) "
            f"but only {buf.size - pos} bytes follow"
        )
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), pos
    gaps, pos = decode_raw(buf, n, pos)
    z, end = decode_raw(buf, n, pos)
    if z.min() == 0:
        k = int(np.argmax(z == 0))
        raise DecodeError(f"pulse batch count #{k} is zero")
    return gaps_to_index(gaps), unzigzag(z), end


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
    ticks = to_u64_nonneg(last_width_ticks, "last_width_ticks")
    n = as_int_array(counts, "counts").size
    if ticks.size != n:
        raise ValueError(f"last_width_ticks must have one entry per device ({ticks.size} != {n})")
    if not ticks.any():
        return bytes([0]) + body
    return b"".join((bytes([PULSE_FLAG_WIDTHS]), body, encode_raw(ticks)))


def decode_pulse_batch_v2(
    data: Buffer, offset: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Decode a version-2 pulse batch -> ``(flat_idx, counts, ticks or None, new_offset)``.

    ``ticks`` is ``int64`` (0 = full width) or None when the batch has no width
    field.  Raises :class:`DecodeError` on reserved flag bits or any error of
    the version-1 part or of the width field.
    """
    buf = as_u8(data)
    offset = check_offset(buf, offset)
    if offset >= buf.size:
        raise DecodeError("truncated pulse batch: the flag byte is missing")
    flags = int(buf[offset])
    if flags & ~PULSE_FLAG_WIDTHS:
        raise DecodeError(f"pulse batch flags 0x{flags:02x} set reserved bits (only 0x01 is defined)")
    idx, counts, pos = decode_pulse_batch(buf, offset + 1)
    if not flags & PULSE_FLAG_WIDTHS:
        return idx, counts, None, pos
    ticks, end = decode_raw(buf, idx.size, pos)
    if ticks.dtype == np.uint64 and ticks.size and ticks.max() > U64(I64_MAX):
        raise DecodeError("pulse width ticks do not fit in int64")
    return idx, counts, ticks.astype(np.int64), end
