"""Buffer handling shared by the payload codecs of :mod:`protocols.encoding`: argument checks, no formats.

Every decoder reads its input through :func:`as_u8` and raises :class:`DecodeError` (a ``ValueError``)
for any content of the data; bad argument *types* raise ``TypeError``.
"""

from __future__ import annotations

import operator

import numpy as np

Buffer = bytes | bytearray | memoryview

I64_MAX = np.iinfo(np.int64).max
U64 = np.uint64


class DecodeError(ValueError):
    """Raised when a buffer does not hold a valid encoding."""


def as_u8(data: Buffer) -> np.ndarray:
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


def check_offset(buf: np.ndarray, offset: int) -> int:
    offset = as_index(offset, "offset")
    if offset > buf.size:
        raise DecodeError(f"offset {offset} is past the end of the {buf.size}-byte buffer")
    return offset


def as_index(value: int, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)  # int or numpy integer; rejects floats
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def as_int_array(a, name: str) -> np.ndarray:
    """Flatten to a 1-D integer array; empty input of any dtype is allowed."""
    arr = np.asarray(a)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr.reshape(-1)


def to_u64_nonneg(a, name: str) -> np.ndarray:
    arr = as_int_array(a, name)
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative (min is {int(arr.min())})")
    return arr.astype(np.uint64, copy=False)
