"""Compact, vectorised payload encodings for the FPGA wire protocol: the format reference.

The code lives in :mod:`protocols.buffers` (argument checks), :mod:`protocols.varint` (uvarints,
zigzag), :mod:`protocols.pulse_batch` (sparse indices, pulse batches) and :mod:`protocols.arrays`
(fixed-width arrays, packed codes, quantisation); this module re-exports their public names, so
``from protocols import encoding as enc`` keeps working, and documents the formats they share.

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
                                         (HELLO ``timing_resolution_sec``);
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

from protocols.arrays import (
    decode_f64,
    decode_i8,
    decode_i16,
    decode_packed,
    decode_u16,
    dequantize,
    encode_f64,
    encode_i8,
    encode_i16,
    encode_packed,
    encode_u16,
    packed_size,
    quantize,
)
from protocols.buffers import Buffer, DecodeError
from protocols.pulse_batch import (
    PULSE_FLAG_WIDTHS,
    decode_pulse_batch,
    decode_pulse_batch_v2,
    decode_sparse_indices,
    encode_pulse_batch,
    encode_pulse_batch_v2,
    encode_sparse_indices,
)
from protocols.varint import (
    MAX_UVARINT_BYTES,
    decode_uvarints,
    encode_uvarints,
    zigzag_decode,
    zigzag_encode,
)

__all__ = [
    "MAX_UVARINT_BYTES",
    "PULSE_FLAG_WIDTHS",
    "Buffer",
    "DecodeError",
    "decode_f64",
    "decode_i8",
    "decode_i16",
    "decode_packed",
    "decode_pulse_batch",
    "decode_pulse_batch_v2",
    "decode_sparse_indices",
    "decode_u16",
    "decode_uvarints",
    "dequantize",
    "encode_f64",
    "encode_i8",
    "encode_i16",
    "encode_packed",
    "encode_pulse_batch",
    "encode_pulse_batch_v2",
    "encode_sparse_indices",
    "encode_u16",
    "encode_uvarints",
    "packed_size",
    "quantize",
    "zigzag_decode",
    "zigzag_encode",
]
