"""Unsigned LEB128 varints and zigzag, vectorised (formats in :mod:`protocols.encoding`).

The only Python-level loops run over byte *positions* inside a varint (at most 10), never over
elements; decoding work is bounded by the bytes consumed.
"""

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

#: Longest canonical uvarint (a 64-bit value needs ceil(64 / 7) = 10 bytes).
MAX_UVARINT_BYTES = 10


def _narrow_uint(maxlen: int) -> np.dtype:
    """Smallest unsigned dtype holding any ``maxlen``-byte uvarint."""
    if maxlen <= 1:
        return np.dtype(np.uint8)
    if maxlen <= 2:
        return np.dtype(np.uint16)
    if maxlen <= 4:
        return np.dtype(np.uint32)
    return np.dtype(np.uint64)


def encode_raw(v: np.ndarray) -> bytes:
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
        ls += vs >= U64(1 << (7 * k))
    extra = ls - 1
    cum = np.cumsum(extra)
    starts = sub + (cum - extra)  # output position of each multi-byte varint
    total = n + int(cum[-1])
    first[sub] = (vs & U64(0x7F)).astype(np.uint8) | np.uint8(0x80)
    out = np.empty(total, dtype=np.uint8)
    is_first = np.ones(total, dtype=bool)
    rows = np.arange(sub.size)
    for k in range(1, maxlen):
        pos = starts[rows] + k
        is_first[pos] = False
        byte = ((vs[rows] >> U64(7 * k)) & U64(0x7F)).astype(np.uint8)
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
    return encode_raw(to_u64_nonneg(values, "values"))


def _group_runs(cidx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sorted varint indices of continuation bytes: run starts and lengths."""
    new = np.empty(cidx.size, dtype=bool)
    new[:1] = True
    np.not_equal(cidx[1:], cidx[:-1], out=new[1:])
    gstart = np.flatnonzero(new)
    ncont = np.diff(gstart, append=cidx.size)
    return gstart, ncont


def decode_raw(buf: np.ndarray, count: int, offset: int) -> tuple[np.ndarray, int]:
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

    cont, cidx, cpos, stop = _scan(buf, count, offset, avail)
    window = buf[offset : offset + stop]
    last = window[~cont[:stop]]  # terminating (most significant) byte of each varint
    ncont = stop - count
    cidx = cidx[:ncont]
    cpos = cpos[:ncont]
    gstart, nc = _group_runs(cidx)
    gidx = cidx[gstart]  # indices of the multi-byte varints
    lastm = last[gidx]
    _check_canonical(nc, lastm, gidx, cpos[gstart], offset)
    # value = sum over its continuation bytes of (b & 0x7f) << 7*j, plus the
    # terminating byte << 7*ncont
    shift = (cpos - np.repeat(cpos[gstart], nc)) * 7
    low = (window[cpos] & np.uint8(0x7F)).astype(np.uint64) << shift.astype(np.uint64)
    valm = np.bitwise_or.reduceat(low, gstart)
    valm |= lastm.astype(np.uint64) << (nc * 7).astype(np.uint64)
    vals = last.astype(_narrow_uint(int(nc.max()) + 1))
    vals[gidx] = valm
    return vals, offset + stop


def _scan(buf: np.ndarray, count: int, offset: int, avail: int):
    """Find the bytes the first ``count`` varints at ``offset`` take, scanning a window that grows
    geometrically: ``(continuation mask, varint index of each continuation byte, their positions, bytes used)``."""
    limit = min(MAX_UVARINT_BYTES * count, avail)
    w = min(limit, count + (count >> 3) + 16)
    while True:
        cont = buf[offset : offset + w] > 0x7F
        cpos = np.flatnonzero(cont)
        cidx = cpos - np.arange(cpos.size)  # varint index of each continuation byte
        ncont = int(np.searchsorted(cidx, count, side="left"))
        stop = count + ncont  # bytes used by the first `count` varints
        if stop <= w:
            return cont, cidx, cpos, stop
        if w == limit:
            _raise_incomplete(cidx, cpos, count, offset, w, avail)
        # estimate the bytes needed from the density seen so far, grow >= 2x
        per = w / max(w - cpos.size, 1)
        w = min(limit, max(2 * w, int(count * per) + 16))


def _check_canonical(nc: np.ndarray, lastm: np.ndarray, gidx: np.ndarray, gpos: np.ndarray, offset: int) -> None:
    """Reject multi-byte varints that are too long, overlong (trailing zero byte) or beyond 64 bits; ``nc`` are
    their continuation byte counts, ``lastm`` their last bytes, ``gidx`` their indices, ``gpos`` their positions."""
    if nc.max() >= MAX_UVARINT_BYTES:
        k = int(np.argmax(nc >= MAX_UVARINT_BYTES))
        raise DecodeError(
            f"overlong uvarint #{int(gidx[k])} at offset {offset + int(gpos[k])}: "
            f"more than {MAX_UVARINT_BYTES} bytes"
        )
    bad = lastm == 0
    if bad.any():
        k = int(np.argmax(bad))
        raise DecodeError(
            f"non-canonical (overlong) uvarint #{int(gidx[k])} at offset "
            f"{offset + int(gpos[k])}: trailing zero byte"
        )
    if int(nc.max()) + 1 == MAX_UVARINT_BYTES:
        bad = (nc == MAX_UVARINT_BYTES - 1) & (lastm > 1)
        if bad.any():
            k = int(np.argmax(bad))
            raise DecodeError(
                f"uvarint #{int(gidx[k])} at offset {offset + int(gpos[k])} "
                "overflows 64 bits"
            )


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
    buf = as_u8(data)
    count = as_index(count, "count")
    offset = check_offset(buf, offset)
    vals, end = decode_raw(buf, count, offset)
    if dtype == np.int64 and vals.dtype == np.uint64 and vals.max() > U64(I64_MAX):
        k = int(np.argmax(vals > U64(I64_MAX)))
        raise DecodeError(
            f"uvarint #{k} = {int(vals[k])} does not fit in int64 "
            "(use dtype=np.uint64 for the full range)"
        )
    return vals.astype(dtype), end


def zigzag(c: np.ndarray) -> np.ndarray:
    """Zigzag in the input's own width: intN -> uintN (uint input -> via int64)."""
    if c.dtype.kind == "u":
        if c.size and c.max() > I64_MAX:
            raise ValueError("zigzag input does not fit in int64")
        c = c.astype(np.int64)
    bits = c.dtype.itemsize * 8
    z = c << c.dtype.type(1)
    z ^= c >> c.dtype.type(bits - 1)
    return z.view(f"u{c.dtype.itemsize}")


def unzigzag(u: np.ndarray) -> np.ndarray:
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
    arr = as_int_array(a, "a")
    if arr.dtype.kind == "u" and arr.size and arr.max() > I64_MAX:
        raise ValueError("zigzag_encode input does not fit in int64")
    return zigzag(arr.astype(np.int64, copy=False)).reshape(np.shape(a))


def zigzag_decode(a) -> np.ndarray:
    """Inverse of :func:`zigzag_encode`: uint64 (or any non-negative ints) -> int64."""
    arr = as_int_array(a, "a")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise ValueError("zigzag_decode input must be non-negative")
    return unzigzag(arr.astype(np.uint64, copy=False)).reshape(np.shape(a))
