"""The serial driver against the emulator over a real pseudo-terminal and a real TCP socket, with faults."""

from __future__ import annotations

import numpy as np
import pytest

from drivers import BoardTimeout, PulseBatch, open_board
from drivers.fpga import FpgaBoard
from drivers.links import InProcessLink
from firmware_stub.firmware import make_emulator
from tests.faults import FaultyLink, FaultyTcpProxy
from tests.waiting import HANG_GUARD_SEC

pytestmark = pytest.mark.timing  # real pty and TCP served by threads, link timeouts and retransmissions

RETRY_BUDGET_SEC = int(HANG_GUARD_SEC)  # attempts x attempt timeout, per request


def _workload(board, seed: int = 5, steps: int = 12):
    """A mix of pulse batches and reads; returns everything the host saw."""
    rng = np.random.default_rng(seed)
    n = board.info.rows * board.info.cols
    seen = []
    for _ in range(steps):
        flat = np.sort(rng.choice(n, size=int(rng.integers(1, n // 3)), replace=False))
        counts = rng.integers(1, 5, size=flat.size) * rng.choice([-1, 1], size=flat.size)
        board.pulse(PulseBatch(flat // board.info.cols, flat % board.info.cols, counts))
        seen.append(board.read())
    seen.append(board.status(with_digest=True).state_digest)
    return seen


def _same(a, b):
    assert a[-1] == b[-1]  # the array state, bit for bit
    for x, y in zip(a[:-1], b[:-1]):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def clean_run():
    with open_board("emu?rows=32&cols=48&seed=3") as board:
        return _workload(board)


def test_pty_link_gives_the_same_results_as_in_process(pty_emulator, clean_run):
    with open_board(f"serial:{pty_emulator.path}") as board:
        assert board.info.rows == 32
        _same(_workload(board), clean_run)


def test_tcp_link_gives_the_same_results_as_in_process(tcp_emulator, clean_run):
    with open_board(f"serial:{tcp_emulator.url}") as board:
        _same(_workload(board), clean_run)


def test_faulty_link_loses_nothing_and_applies_nothing_twice(clean_run):
    endpoint = make_emulator(32, 48, seed=3)
    link = FaultyLink(InProcessLink(endpoint), seed=42, drop=1e-4, corrupt=1e-4, garbage=0.1, delay=0.15)
    # short attempts, so each fault costs little; retries for a 120 s budget, so a busy machine costs only
    # retransmissions (never asserted from above), not a timeout
    with FpgaBoard(link, timeout_sec=0.05, retries=RETRY_BUDGET_SEC * 20) as board:
        seen = _workload(board)
        assert board.retransmissions > 3  # the faults did bite
    assert link.tx.faults + link.rx.faults > 10
    assert endpoint.sessions.chunks_resent > 0  # lost reply chunks were resent, not re-executed
    _same(seen, clean_run)


def test_faulty_tcp_proxy_loses_nothing_and_applies_nothing_twice(tcp_emulator, clean_run):
    proxy = FaultyTcpProxy((tcp_emulator.host, tcp_emulator.port), seed=7, drop=0.0003, corrupt=0.0003, garbage=0.05)
    try:
        address = f"serial:socket://127.0.0.1:{proxy.port}?timeout=0.1&retries={RETRY_BUDGET_SEC * 10}"
        with open_board(address) as board:
            seen = _workload(board)
            assert board.retransmissions > 0
        assert proxy.total_faults > 0
        _same(seen, clean_run)
    finally:
        proxy.close()


def test_a_board_that_does_not_answer_times_out_clearly(tcp_emulator):
    tcp_emulator.stop.set()  # a listening socket that nobody serves behaves like a dead board
    import socket

    silent = socket.create_server(("127.0.0.1", 0))
    try:
        port = silent.getsockname()[1]
        with pytest.raises(BoardTimeout, match="did not answer HELLO"):
            open_board(f"serial:socket://127.0.0.1:{port}?timeout=0.1&retries=1")
    finally:
        silent.close()
