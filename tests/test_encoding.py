"""Tests for protocols.encoding: round trips, fuzzing, byte budgets, speed.

One file for one codec module: every message kind's tests sit next to each other, sharing the
strategies and frame helpers at the top, so a change to the codec is checked in one place.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocols.encoding import (
    DecodeError,
    decode_f64,
    decode_i8,
    decode_i16,
    decode_packed,
    decode_pulse_batch,
    decode_pulse_batch_v2,
    decode_sparse_indices,
    decode_u16,
    decode_uvarints,
    dequantize,
    encode_f64,
    encode_i8,
    encode_i16,
    encode_packed,
    encode_pulse_batch,
    encode_pulse_batch_v2,
    encode_sparse_indices,
    encode_u16,
    encode_uvarints,
    packed_size,
    quantize,
    zigzag_decode,
    zigzag_encode,
)

I64_MAX = 2**63 - 1
U64_MAX = 2**64 - 1

# Example counts keep the whole file well under 20 s; set e.g.
# ENCODING_TEST_SCALE=50 for a long soak run.
_SCALE = float(os.environ.get("ENCODING_TEST_SCALE", "1"))
FUZZ = settings(
    max_examples=int(200 * _SCALE),
    deadline=None,  # a hang ends at the timeout mark below; a per-example deadline fails on a busy machine
    suppress_health_check=[HealthCheck.too_slow],
)
PROP = settings(max_examples=int(60 * _SCALE), deadline=None)

# values that stress every varint length boundary
_BOUNDARY_U64 = sorted(
    {0, 1, U64_MAX, I64_MAX, 2**63}
    | {2 ** (7 * k) + d for k in range(1, 10) for d in (-1, 0, 1)}
)


def u64_arrays(max_size=64):
    elems = st.one_of(
        st.sampled_from(_BOUNDARY_U64),
        st.integers(0, 300),
        st.integers(0, 2**35),
        st.integers(0, U64_MAX),
    )
    return hnp.arrays(np.uint64, st.integers(0, max_size), elements=elems)


def i64_arrays(max_size=64):
    elems = st.one_of(
        st.sampled_from([0, 1, -1, 63, -64, 64, -65, I64_MAX, -I64_MAX - 1]),
        st.integers(-1000, 1000),
        st.integers(-I64_MAX - 1, I64_MAX),
    )
    return hnp.arrays(np.int64, st.integers(0, max_size), elements=elems)


@st.composite
def sorted_indices(draw, max_size=64, max_value=I64_MAX):
    vals = draw(
        st.sets(
            st.one_of(
                st.integers(0, 2000),
                st.integers(0, max_value),
                st.sampled_from([0, max_value]),
            ),
            max_size=max_size,
        )
    )
    return np.array(sorted(vals), dtype=np.int64)


@st.composite
def pulse_batches(draw, max_size=64):
    idx = draw(sorted_indices(max_size=max_size))
    cnt_elems = st.one_of(
        st.integers(-3, 3), st.integers(-I64_MAX - 1, I64_MAX)
    ).filter(lambda c: c != 0)
    counts = draw(hnp.arrays(np.int64, idx.size, elements=cnt_elems))
    return idx, counts


# ---------------------------------------------------------------------------
# uvarints
# ---------------------------------------------------------------------------

KNOWN_UVARINTS = [
    (0, "00"),
    (1, "01"),
    (127, "7f"),
    (128, "80 01"),
    (300, "ac 02"),
    (16383, "ff 7f"),
    (16384, "80 80 01"),
    (2**35, "80 80 80 80 80 01"),
    (I64_MAX, "ff ff ff ff ff ff ff ff 7f"),
    (U64_MAX, "ff ff ff ff ff ff ff ff ff 01"),
]


@pytest.mark.parametrize(("value", "hexbytes"), KNOWN_UVARINTS)
def test_uvarint_known_vectors(value, hexbytes):
    data = encode_uvarints(np.array([value], dtype=np.uint64))
    assert data == bytes.fromhex(hexbytes)
    vals, off = decode_uvarints(data, 1, dtype=np.uint64)
    assert vals.dtype == np.uint64 and int(vals[0]) == value and off == len(data)


@PROP
@given(u64_arrays(), st.binary(max_size=8), st.binary(max_size=8))
def test_uvarint_roundtrip_u64(values, prefix, suffix):
    data = encode_uvarints(values)
    buf = prefix + data + suffix
    out, off = decode_uvarints(buf, values.size, len(prefix), dtype=np.uint64)
    assert out.dtype == np.uint64
    np.testing.assert_array_equal(out, values)
    assert off == len(prefix) + len(data)


@PROP
@given(hnp.arrays(np.int64, st.integers(0, 64), elements=st.integers(0, I64_MAX)))
def test_uvarint_roundtrip_int64_default(values):
    data = encode_uvarints(values)
    out, off = decode_uvarints(memoryview(data), values.size)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, values)
    assert off == len(data)


def test_uvarint_shapes_and_dtypes():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out, _ = decode_uvarints(encode_uvarints(a), 12)
    np.testing.assert_array_equal(out, a.ravel())
    assert encode_uvarints(np.array([], dtype=np.float64)) == b""
    assert encode_uvarints([]) == b""
    with pytest.raises(ValueError):
        encode_uvarints(np.array([3, -1]))
    with pytest.raises(TypeError):
        encode_uvarints(np.array([1.5]))


def test_uvarint_errors():
    with pytest.raises(DecodeError, match="truncated"):
        decode_uvarints(b"\x80", 1)
    with pytest.raises(DecodeError, match="truncated"):
        decode_uvarints(b"\x01\x02", 3)
    with pytest.raises(DecodeError, match="truncated"):
        decode_uvarints(b"\x01\xff\xff", 2)
    with pytest.raises(DecodeError, match="overlong"):
        decode_uvarints(b"\x80\x00", 1)  # non-canonical zero
    with pytest.raises(DecodeError, match="overlong"):
        decode_uvarints(b"\xff" * 10 + b"\x01", 1, dtype=np.uint64)  # 11 bytes
    with pytest.raises(DecodeError, match="overlong"):
        decode_uvarints(b"\xff" * 40, 1)
    with pytest.raises(DecodeError, match="64 bits"):
        decode_uvarints(b"\xff" * 9 + b"\x02", 1, dtype=np.uint64)
    with pytest.raises(DecodeError, match="int64"):
        decode_uvarints(encode_uvarints(np.array([2**63], dtype=np.uint64)), 1)
    with pytest.raises(DecodeError, match="offset"):
        decode_uvarints(b"\x01", 1, offset=5)
    with pytest.raises(ValueError):
        decode_uvarints(b"\x01", -1)
    with pytest.raises(TypeError):
        decode_uvarints(b"\x01", 1.0)
    # DecodeError is a ValueError
    assert issubclass(DecodeError, ValueError)


def test_decoders_accept_buffer_types():
    payload = encode_uvarints(np.array([1, 300, 2**40]))
    expect = [1, 300, 2**40]
    for buf in (payload, bytearray(payload), memoryview(payload),
                np.frombuffer(payload, dtype=np.uint8)):
        vals, off = decode_uvarints(buf, np.int64(3), np.int32(0))
        assert vals.tolist() == expect and off == len(payload)
    # non-byte memoryview formats are read as raw octets
    words = np.array([0x0201, 0x7F03], dtype="<u2")
    vals, off = decode_uvarints(memoryview(words.tobytes()).cast("H"), 4)
    assert vals.tolist() == [1, 2, 3, 127] and off == 4
    # results are writable copies, independent of the input buffer
    buf = bytearray(b"\x05\x06")
    vals, _ = decode_uvarints(buf, 2)
    buf[0] = 9
    assert vals.tolist() == [5, 6] and vals.flags.writeable


# ---------------------------------------------------------------------------
# zigzag
# ---------------------------------------------------------------------------


def test_zigzag_known():
    a = np.array([0, -1, 1, -2, 2, -64, 63, I64_MAX, -I64_MAX - 1], dtype=np.int64)
    z = zigzag_encode(a)
    assert z.dtype == np.uint64
    assert z.tolist() == [0, 1, 2, 3, 4, 127, 126, U64_MAX - 1, U64_MAX]


@PROP
@given(i64_arrays())
def test_zigzag_roundtrip(a):
    z = zigzag_encode(a)
    assert z.dtype == np.uint64 and z.shape == a.shape
    back = zigzag_decode(z)
    assert back.dtype == np.int64
    np.testing.assert_array_equal(back, a)
    # small magnitudes get small codes: |z| <= 2|a|
    small = (a > -(2**40)) & (a < 2**40)
    assert np.all(z[small] <= 2 * np.abs(a[small]).astype(np.uint64))


# ---------------------------------------------------------------------------
# sparse indices
# ---------------------------------------------------------------------------


@PROP
@given(sorted_indices(), st.binary(max_size=4))
def test_sparse_roundtrip(idx, prefix):
    data = encode_sparse_indices(idx)
    out, off = decode_sparse_indices(bytearray(prefix + data + b"\xaa"), idx.size, len(prefix))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, idx)
    assert off == len(prefix) + len(data)


def test_sparse_gap_layout():
    # first = idx[0], then idx[k] - idx[k-1] - 1
    data = encode_sparse_indices(np.array([5, 6, 8, 200]))
    assert data == bytes([5, 0, 1]) + bytes.fromhex("bf 01")  # 200-8-1 = 191


@PROP
@given(
    st.lists(st.integers(0, 10_000), min_size=2, max_size=40),
    st.data(),
)
def test_sparse_rejects_unsorted_or_duplicate(values, data):
    arr = np.array(values, dtype=np.int64)
    if np.all(np.diff(arr) > 0):
        # force a violation: duplicate or swap at a random position
        k = data.draw(st.integers(0, arr.size - 2))
        if data.draw(st.booleans()):
            arr[k + 1] = arr[k]
        else:
            arr[k], arr[k + 1] = arr[k + 1], arr[k]
    with pytest.raises(ValueError, match="strictly increasing"):
        encode_sparse_indices(arr)
    with pytest.raises(ValueError, match="strictly increasing"):
        encode_pulse_batch(arr, np.ones(arr.size, dtype=np.int64))


def test_sparse_rejects_negative():
    with pytest.raises(ValueError, match="non-negative"):
        encode_sparse_indices(np.array([-1, 3]))


def test_sparse_decode_overflow_is_value_error():
    gaps = np.array([I64_MAX, 0], dtype=np.uint64)  # I64_MAX then +1 overflows
    with pytest.raises(DecodeError):
        decode_sparse_indices(encode_uvarints(gaps), 2)
    gaps = np.array([2**63], dtype=np.uint64)
    with pytest.raises(DecodeError):
        decode_sparse_indices(encode_uvarints(gaps), 1)


# ---------------------------------------------------------------------------
# pulse batch
# ---------------------------------------------------------------------------


@PROP
@given(pulse_batches())
def test_pulse_batch_roundtrip(batch):
    idx, counts = batch
    data = encode_pulse_batch(idx, counts)
    i2, c2, off = decode_pulse_batch(data)
    np.testing.assert_array_equal(i2, idx)
    np.testing.assert_array_equal(c2, counts)
    assert i2.dtype == np.int64 and c2.dtype == np.int64
    assert off == len(data)


def test_pulse_batch_layout():
    data = encode_pulse_batch(np.array([3, 4, 300]), np.array([2, -1, -3]))
    # N=3 | gaps 3, 0, 295 (a7 02) | zigzag 4, 1, 5
    assert data == bytes.fromhex("03 03 00 a7 02 04 01 05")
    assert encode_pulse_batch(np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == b"\x00"


@PROP
@given(pulse_batches(), st.data())
def test_pulse_batch_v2_roundtrip_with_widths(batch, data):
    idx, counts = batch
    ticks = np.array(data.draw(st.lists(st.one_of(st.just(0), st.integers(0, 600), st.integers(0, I64_MAX)),
                                        min_size=idx.size, max_size=idx.size)), dtype=np.int64)
    wire = encode_pulse_batch_v2(idx, counts, ticks)
    i2, c2, t2, off = decode_pulse_batch_v2(wire)
    np.testing.assert_array_equal(i2, idx)
    np.testing.assert_array_equal(c2, counts)
    assert off == len(wire)
    if ticks.any():
        np.testing.assert_array_equal(t2, ticks)
        assert wire[0] == 0x01 and t2.dtype == np.int64
    else:  # an all-full batch costs one flag byte over version 1
        assert t2 is None and wire == b"\x00" + encode_pulse_batch(idx, counts)
    # concatenated payloads decode back to back
    i3, c3, t3, off3 = decode_pulse_batch_v2(wire + wire, off)
    np.testing.assert_array_equal(i3, idx)
    assert off3 == 2 * len(wire)


def test_pulse_batch_v2_layout_and_validation():
    wire = encode_pulse_batch_v2(np.array([3, 4, 300]), np.array([2, -1, -3]), np.array([0, 20, 200]))
    # flags 01 | v1 batch | ticks 0, 20, 200 (c8 01)
    assert wire == bytes.fromhex("01 03 03 00 a7 02 04 01 05 00 14 c8 01")
    assert encode_pulse_batch_v2(np.array([5]), np.array([1]), None) == bytes.fromhex("00 01 05 02")
    with pytest.raises(ValueError, match="one entry per device"):
        encode_pulse_batch_v2(np.array([1, 2]), np.array([1, 1]), np.array([3]))
    with pytest.raises(ValueError, match="non-negative"):
        encode_pulse_batch_v2(np.array([1]), np.array([1]), np.array([-3]))
    with pytest.raises(DecodeError, match="reserved"):
        decode_pulse_batch_v2(bytes.fromhex("02 01 05 02"))
    with pytest.raises(DecodeError, match="flag byte"):
        decode_pulse_batch_v2(b"")
    with pytest.raises(DecodeError, match="truncated"):
        decode_pulse_batch_v2(bytes.fromhex("01 02 05 00 02 02 14"))  # one width of two


@FUZZ
@given(st.binary(max_size=64))
def test_pulse_batch_v2_fuzz_raises_only_decode_error(blob):
    try:
        decode_pulse_batch_v2(blob)
    except DecodeError:
        pass


def test_pulse_batch_validation():
    with pytest.raises(ValueError, match="non-zero"):
        encode_pulse_batch(np.array([1, 2]), np.array([1, 0]))
    with pytest.raises(ValueError, match="same length"):
        encode_pulse_batch(np.array([1, 2]), np.array([1]))
    with pytest.raises(DecodeError, match="zero"):
        decode_pulse_batch(bytes.fromhex("01 05 00"))
    with pytest.raises(DecodeError, match="truncated"):
        decode_pulse_batch(bytes.fromhex("05 01 01"))
    with pytest.raises(DecodeError, match="truncated"):
        decode_pulse_batch(bytes.fromhex("ff ff ff ff 0f"))  # absurd N
    with pytest.raises(DecodeError):
        decode_pulse_batch(b"")


# ---------------------------------------------------------------------------
# fixed-width arrays
# ---------------------------------------------------------------------------

FIXED = [
    (encode_u16, decode_u16, np.uint16, 2),
    (encode_i16, decode_i16, np.int16, 2),
    (encode_i8, decode_i8, np.int8, 1),
]


@pytest.mark.parametrize(("enc", "dec", "dtype", "size"), FIXED)
@PROP
@given(data=st.data())
def test_fixed_roundtrip(enc, dec, dtype, size, data):
    arr = data.draw(hnp.arrays(dtype, st.integers(0, 100)))
    prefix = data.draw(st.binary(max_size=3))
    payload = enc(arr)
    assert len(payload) == size * arr.size
    assert payload == arr.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    out, off = dec(prefix + payload + b"\x00", arr.size, len(prefix))
    assert out.dtype == dtype and out.flags.writeable
    np.testing.assert_array_equal(out, arr)
    assert off == len(prefix) + len(payload)
    with pytest.raises(DecodeError, match="truncated"):
        dec(payload, arr.size + 1)


def test_fixed_little_endian_and_range():
    assert encode_u16(np.array([0x1234, 0xFFFF])) == b"\x34\x12\xff\xff"
    assert encode_i16(np.array([-2])) == b"\xfe\xff"
    assert encode_i8(np.array([-128, 127])) == b"\x80\x7f"
    with pytest.raises(ValueError, match="out of range"):
        encode_u16(np.array([65536]))
    with pytest.raises(ValueError, match="out of range"):
        encode_u16(np.array([-1]))
    with pytest.raises(ValueError, match="out of range"):
        encode_i8(np.array([128]))
    with pytest.raises(TypeError):
        encode_u16(np.array([1.0]))
    # a full 1024x1024 read costs exactly 2 bytes per device
    codes = np.random.default_rng(0).integers(0, 2**16, (1024, 1024)).astype(np.uint16)
    payload = encode_u16(codes)
    assert len(payload) == 2 * codes.size
    out, _ = decode_u16(payload, codes.size)
    np.testing.assert_array_equal(out.reshape(codes.shape), codes)


@PROP
@given(hnp.arrays(np.float64, st.integers(0, 50)))
def test_f64_roundtrip_bitexact(arr):
    payload = encode_f64(arr)
    out, off = decode_f64(payload, arr.size)
    assert out.view(np.uint64).tolist() == arr.view(np.uint64).tolist()
    assert off == 8 * arr.size


# ---------------------------------------------------------------------------
# concatenation and fuzzing
# ---------------------------------------------------------------------------

_item = st.one_of(
    st.tuples(st.just("uvar"), u64_arrays(16)),
    st.tuples(st.just("sparse"), sorted_indices(16)),
    st.tuples(st.just("pulse"), pulse_batches(16)),
    st.tuples(st.just("u16"), hnp.arrays(np.uint16, st.integers(0, 16))),
    st.tuples(st.just("i16"), hnp.arrays(np.int16, st.integers(0, 16))),
    st.tuples(st.just("i8"), hnp.arrays(np.int8, st.integers(0, 16))),
    st.tuples(st.just("f64"), hnp.arrays(np.float64, st.integers(0, 8), elements=st.floats(allow_nan=False))),
)


def _encode_item(kind, payload):
    return {
        "uvar": encode_uvarints,
        "sparse": encode_sparse_indices,
        "pulse": lambda p: encode_pulse_batch(*p),
        "u16": encode_u16,
        "i16": encode_i16,
        "i8": encode_i8,
        "f64": encode_f64,
    }[kind](payload)


@PROP
@given(st.lists(_item, max_size=8))
def test_concatenated_payloads(items):
    parts = [_encode_item(kind, p) for kind, p in items]
    buf = b"".join(parts)
    off = 0
    for (kind, p), part in zip(items, parts):
        start = off
        if kind == "uvar":
            out, off = decode_uvarints(buf, p.size, off, dtype=np.uint64)
            np.testing.assert_array_equal(out, p)
        elif kind == "sparse":
            out, off = decode_sparse_indices(buf, p.size, off)
            np.testing.assert_array_equal(out, p)
        elif kind == "pulse":
            i2, c2, off = decode_pulse_batch(buf, off)
            np.testing.assert_array_equal(i2, p[0])
            np.testing.assert_array_equal(c2, p[1])
        else:
            dec = {"u16": decode_u16, "i16": decode_i16, "i8": decode_i8, "f64": decode_f64}[kind]
            out, off = dec(buf, p.size, off)
            np.testing.assert_array_equal(out, p)
        assert off - start == len(part)
    assert off == len(buf)


_random_bytes = st.one_of(
    st.binary(max_size=200),
    # bias towards continuation-heavy streams, which exercise the varint paths
    st.lists(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0x81, 0xFF]), max_size=200).map(bytes),
)


@FUZZ
@pytest.mark.timeout(120)
@given(_random_bytes, st.integers(0, 60), st.integers(0, 210))
def test_fuzz_uvarints_and_sparse(data, count, offset):
    for dtype in (np.int64, np.uint64):
        try:
            vals, off = decode_uvarints(data, count, offset, dtype=dtype)
        except ValueError:
            continue
        assert vals.dtype == dtype and vals.size == count
        assert offset + count <= off <= len(data)
        # canonical: re-encoding reproduces exactly the consumed bytes
        assert encode_uvarints(vals) == data[offset:off]
    try:
        idx, off = decode_sparse_indices(data, count, offset)
    except ValueError:
        return
    assert idx.dtype == np.int64 and idx.size == count
    assert encode_sparse_indices(idx) == data[offset:off]


@FUZZ
@pytest.mark.timeout(120)
@given(_random_bytes, st.integers(0, 210))
def test_fuzz_pulse_batch(data, offset):
    try:
        idx, counts, off = decode_pulse_batch(data, offset)
    except ValueError:
        return
    assert idx.size == counts.size and np.all(counts != 0)
    assert off <= len(data)
    assert encode_pulse_batch(idx, counts) == data[offset:off]


@FUZZ
@pytest.mark.timeout(120)
@given(_random_bytes, st.integers(0, 120), st.integers(0, 210))
def test_fuzz_fixed(data, count, offset):
    for dec, size in ((decode_u16, 2), (decode_i16, 2), (decode_i8, 1), (decode_f64, 8)):
        try:
            out, off = dec(data, count, offset)
        except ValueError:
            continue
        assert out.size == count and off == offset + size * count <= len(data)


# ---------------------------------------------------------------------------
# quantize / dequantize
# ---------------------------------------------------------------------------


@PROP
@given(
    hnp.arrays(
        np.float64,
        st.integers(0, 50),
        elements=st.floats(allow_nan=False, allow_infinity=True, width=64),
    ),
    st.floats(1e-9, 1e3),
    st.integers(1, 32),
    st.booleans(),
)
def test_quantize_saturates_and_is_monotone(values, lsb, bits, signed):
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    codes = quantize(values, lsb, bits, signed)
    assert codes.shape == values.shape
    assert codes.dtype.kind == ("i" if signed else "u")
    assert np.iinfo(codes.dtype).min <= lo and np.iinfo(codes.dtype).max >= hi
    c = codes.astype(np.int64)
    assert np.all((c >= lo) & (c <= hi))
    with np.errstate(over="ignore"):
        scaled = values / lsb
    assert np.all(c[scaled >= hi + 1] == hi)
    assert np.all(c[scaled <= lo - 1] == lo)
    # monotone: sorting the input sorts the codes
    order = np.argsort(values, kind="stable")
    assert np.all(np.diff(c[order]) >= 0)
    # in range: reconstruction error at most half an LSB
    inside = (scaled >= lo) & (scaled <= hi)
    err = np.abs(dequantize(codes, lsb)[inside] - values[inside])
    assert np.all(err <= 0.5 * lsb * (1 + 1e-9) + 1e-300)


def test_quantize_examples():
    np.testing.assert_array_equal(
        quantize([-1.0, 0.0, 0.4, 0.6, 254.6, 1e9, np.inf], 1.0, 8, False),
        np.array([0, 0, 0, 1, 255, 255, 255], dtype=np.uint8),
    )
    q = quantize([-np.inf, -200.0, -1.5, 2.5, 200.0], 1.0, 8, True)
    assert q.dtype == np.int8
    assert q.tolist() == [-128, -128, -2, 2, 127]  # ties to even
    assert quantize(np.zeros((2, 3)), 0.1, 12, True).dtype == np.int16
    assert quantize([1.0], 1e-3, 16, False).tolist() == [1000]
    np.testing.assert_allclose(dequantize(np.array([3, -2], dtype=np.int8), 0.25), [0.75, -0.5])
    with pytest.raises(ValueError, match="NaN"):
        quantize([0.0, np.nan], 1.0, 8, False)
    with pytest.raises(ValueError):
        quantize([0.0], 0.0, 8, False)
    with pytest.raises(ValueError):
        quantize([0.0], 1.0, 0, False)


# ---------------------------------------------------------------------------
# byte budget and throughput on a 1024 x 1024 crossbar
# ---------------------------------------------------------------------------

N_DEVICES = 1024 * 1024


def _random_batch(fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    k = int(round(N_DEVICES * fraction))
    idx = np.sort(rng.choice(N_DEVICES, size=k, replace=False)).astype(np.int64)
    counts = rng.integers(1, 4, size=k) * rng.choice(np.array([-1, 1]), size=k)
    return idx, counts.astype(np.int64)


@pytest.mark.parametrize(("fraction", "budget"), [(0.001, 3.5), (0.10, 2.2)])
def test_pulse_batch_byte_budget(fraction, budget):
    idx, counts = _random_batch(fraction, seed=20240611)
    payload = encode_pulse_batch(idx, counts)
    per_device = len(payload) / idx.size
    print(f"\n{fraction:.1%} written ({idx.size} devices): {per_device:.4f} B/device")
    assert per_device <= budget
    i2, c2, off = decode_pulse_batch(payload)
    np.testing.assert_array_equal(i2, idx)
    np.testing.assert_array_equal(c2, counts)
    assert off == len(payload)


# ---- bit-packed codes (ADC and DAC codes at their converters' widths) ---------------


@st.composite
def packed_codes(draw):
    bits = draw(st.integers(1, 32))
    signed = draw(st.booleans())
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    codes = draw(hnp.arrays(np.int64, st.integers(0, 300), elements=st.integers(lo, hi)))
    return codes, bits, signed


@given(packed_codes(), st.binary(max_size=4), st.binary(max_size=4))
def test_packed_codes_round_trip_at_exactly_their_bit_width(case, prefix, suffix):
    codes, bits, signed = case
    blob = encode_packed(codes, bits, signed)
    assert len(blob) == packed_size(codes.size, bits) == -(-codes.size * bits // 8)
    out, off = decode_packed(prefix + blob + suffix, codes.size, bits, signed, len(prefix))
    assert off == len(prefix) + len(blob)
    np.testing.assert_array_equal(out, codes)


@given(packed_codes())
def test_packed_codes_refuse_codes_outside_their_width(case):
    codes, bits, signed = case
    lo = -(1 << (bits - 1)) if signed else 0
    with pytest.raises(ValueError, match="out of range"):
        encode_packed(np.append(codes, lo - 1), bits, signed)


@given(packed_codes(), st.data())
def test_packed_codes_reject_truncation_and_nonzero_padding(case, data):
    codes, bits, signed = case
    blob = encode_packed(codes, bits, signed)
    if blob:
        with pytest.raises(DecodeError, match="truncated"):
            decode_packed(blob[:-1], codes.size, bits, signed)
    pad = len(blob) * 8 - codes.size * bits
    if pad:
        bit = data.draw(st.integers(8 - pad, 7))
        bad = blob[:-1] + bytes([blob[-1] | (1 << bit)])
        with pytest.raises(DecodeError, match="padding"):
            decode_packed(bad, codes.size, bits, signed)
