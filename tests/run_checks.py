"""Comparing the summaries of two runs of the same seed: the promise is the same result, in-process,
over a pty, over TCP, interrupted and resumed, alone or in a sweep."""

from __future__ import annotations

import pytest

WIRE_BYTES_REL = 1e-3
"""``wire_bytes_total`` of two runs of the same seed may differ by a few bytes in some 10^5: each host opens
its session with a random id (so that a new host is never answered from an old session's replay cache), and
the frames' COBS stuffing depends on where zero bytes fall.  Board time does not depend on it (the emulated
link is timed by the messages' nominal sizes)."""


def assert_same_run(a: dict, b: dict, ignore: frozenset[str] | set[str] = frozenset({"wall_s"})) -> None:
    """Every summary field equal but the ``ignore``d ones, and the wire bytes within :data:`WIRE_BYTES_REL`."""
    skip = set(ignore) | {"wire_bytes_total"}
    assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}
    assert ("wire_bytes_total" in a) == ("wire_bytes_total" in b)
    if "wire_bytes_total" in a:
        assert a["wire_bytes_total"] == pytest.approx(b["wire_bytes_total"], rel=WIRE_BYTES_REL)


def calibration_of(tmp_path_factory, address: str, **params) -> str:
    """Calibrate the board at ``address`` (``CalibrationParams(**params)``) into a new temporary folder;
    the path of its ``calibration.json``, for module-scoped fixtures of the tests that train."""
    from calibration.run import CalibrationParams, calibrate
    from drivers import open_board

    out = tmp_path_factory.mktemp("cal")
    with open_board(address) as board:
        calibrate(board, out, CalibrationParams(**params), progress=False)
    return str(out / "calibration.json")
