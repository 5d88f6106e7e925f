"""Training through a real lossy TCP proxy between ``serial:socket://`` and the TCP emulator.

0.1 % of bytes flipped and 0.05 % dropped, both ways: a 1-epoch ``eapu`` run on ``digits``
(the task of the published comparison, on the default 128x128 emulated board) finishes, its summary
(all but wall time and wire bytes) and the board's final state equal a clean run's, and
the firmware applied exactly the same pulses (none twice, none lost).  At 1 % flips the
run fails, within a bounded number of polls, naming the link errors it saw.
"""

from __future__ import annotations

import pytest

from drivers import BoardTimeout, open_board
from firmware_stub.firmware import make_emulator
from firmware_stub.serve import TcpServer, serve_in_thread
from hil.train import TrainConfig, train
from tests.faults import FaultyTcpProxy
from tests.run_checks import calibration_of

ROWS, COLS, SEED = 128, 128, 0  # the default emulated board: digits' 64-32-10 network fits it
NOT_COMPARED = {"wall_s", "wire_bytes_total", "board"}


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory) -> str:
    # reduced samples: the link is under test here, not the calibration's precision
    return calibration_of(tmp_path_factory, f"emu?rows={ROWS}&cols={COLS}&seed={SEED}", seed=SEED, plots=False,
                          sample=256)


def _served():
    server = TcpServer(make_emulator(ROWS, COLS, seed=SEED))
    return server, serve_in_thread(server)


def _train(address: str, cal: str, out) -> dict:
    cfg = TrainConfig(task="digits", method="eapu", board=address, epochs=1, seed=SEED, calibration=cal)
    return train(cfg, out, progress=False)


@pytest.mark.slow
def test_a_run_through_a_bad_line_ends_exactly_like_a_clean_run(tmp_path, calibration_file):
    clean_server, t1 = _served()
    bad_server, t2 = _served()
    proxy = FaultyTcpProxy((bad_server.host, bad_server.port), seed=1, corrupt=1e-3, drop=5e-4)
    try:
        clean = _train(f"serial:{clean_server.url}", calibration_file, tmp_path / "clean")
        bad = _train(f"serial:socket://127.0.0.1:{proxy.port}?timeout=0.05&retries=20", calibration_file,
                     tmp_path / "bad")
        assert proxy.total_faults > 1000  # the line was bad throughout
        assert bad_server.endpoint.sessions.chunks_resent > 0
        for key in set(clean) | set(bad):
            if key not in NOT_COMPARED:
                assert clean[key] == bad[key], key
        a, b = clean_server.endpoint.firmware, bad_server.endpoint.firmware
        assert a.array.state_digest() == b.array.state_digest()  # the same final board, bit for bit
        # exactly once: the same pulse totals and the same last applied batch
        assert a.array.counters.pulses_total == b.array.counters.pulses_total
        # (a tag's high half is the run's random nonce, its low half the step)
        assert a.status()["last_pulse_tag"] & 0xFFFFFFFF == b.status()["last_pulse_tag"] & 0xFFFFFFFF > 0
    finally:
        proxy.close()
        for server, thread in ((clean_server, t1), (bad_server, t2)):
            server.stop.set()
            thread.join(5)


def test_a_hopeless_line_fails_in_bounded_polls_naming_what_it_saw(tmp_path):
    server, thread = _served()
    proxy = FaultyTcpProxy((server.host, server.port), seed=2, corrupt=1e-2)
    try:
        with pytest.raises(BoardTimeout) as err:
            with open_board(f"serial:socket://127.0.0.1:{proxy.port}?timeout=0.05&retries=10") as board:
                board.read()  # 6 KB of reply: hopeless at 1 % flips
        text = str(err.value)
        assert "CRC errors" in text and "too noisy" in text and "check the cable" in text
        assert "\n" not in text
    finally:
        proxy.close()
        server.stop.set()
        thread.join(5)
