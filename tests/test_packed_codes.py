"""Protocol version 4 sends VMM converter codes at the converters' widths; older firmware still works.

A board is opened at the newest version both ends speak: the same seeded emulator answers the
same VMM with the same currents in version 4 (packed codes) and version 3 (int8/int16 codes),
and version 4 puts fewer bytes on the wire for it.
"""

from __future__ import annotations

import numpy as np

from drivers.board import Region
from drivers.fpga import FpgaBoard
from drivers.links import InProcessLink
from firmware_stub.firmware import make_emulator
from protocols import encoding as enc
from protocols import messages as m


def _board(supported: tuple[int, ...] | None = None) -> FpgaBoard:
    endpoint = make_emulator(32, 48, seed=11)
    if supported is not None:
        endpoint.firmware.supported_versions = supported
    return FpgaBoard(InProcessLink(endpoint))


def _vmm_bytes(board: FpgaBoard, v: np.ndarray) -> tuple[np.ndarray, int]:
    before = board.wire_bytes
    i = board.vmm(Region(0, 0, 32, 48), v, i_full_scale_a=1e-4)
    return i, board.wire_bytes - before


def test_version_4_packs_codes_and_answers_like_version_3():
    v = np.random.default_rng(5).uniform(-0.2, 0.2, (16, 32))
    new, old = _board((1, 2, 3, 4)), _board((1, 2, 3))
    with new, old:
        assert (new.protocol_version, old.protocol_version) == (4, 3)
        assert new.info.protocol_version == 4 and old.info.protocol_version == 3
        i4, n4 = _vmm_bytes(new, v)
        i3, n3 = _vmm_bytes(old, v)
    np.testing.assert_array_equal(i4, i3)
    info = new.info
    payload_saved = (16 * 32 * (8 - info.dac_bits) + 16 * 48 * (16 - info.adc_bits)) // 8
    assert payload_saved > 0 and n4 < n3  # wire bytes also hold frame headers, CRCs and COBS overhead


def test_vmm_reply_is_exactly_the_packed_adc_codes():
    board = _board()
    with board:
        bits = board.info.adc_bits
        codes = np.arange(-(1 << (bits - 1)), 1 << (bits - 1))
        blob = m.encode_vmm_result(codes, bits)
        assert len(blob) == enc.packed_size(codes.size, bits)
        np.testing.assert_array_equal(m.decode_vmm_result(blob, 1, codes.size, bits)[0], codes)
