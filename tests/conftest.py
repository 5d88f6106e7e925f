"""Shared fixtures: emulated boards in-process, on a real pseudo-terminal and on a real TCP socket.

Also the suite-wide Hypothesis profile (nothing measured in wall time) and one BLAS thread per
process (hil.blas_threads), as the ``hil`` command line has.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from drivers.address import open_board
from firmware_stub.firmware import make_emulator
from firmware_stub.serve import PtyServer, TcpServer, serve_in_thread
from hil.blas_threads import limit_blas_threads
from tests.waiting import HANG_GUARD_SEC

limit_blas_threads()  # the suite's workers, and the processes they start, run side by side

# Nothing measured in wall time: on a busy machine one example can take far longer than Hypothesis's
# 200 ms deadline (the test then fails as "flaky"), and slow data generation trips the too_slow health
# check.  A hang still ends at pytest-timeout's bound.
settings.register_profile("busy-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("busy-machine")


@pytest.fixture
def emu():
    with open_board("emu?rows=32&cols=48&seed=3") as board:
        yield board


@pytest.fixture
def tcp_emulator():
    """An emulator served on a real TCP socket in a background thread; yields the server."""
    server = TcpServer(make_emulator(32, 48, seed=3), "127.0.0.1", 0)
    thread = serve_in_thread(server)
    yield server
    server.stop.set()
    thread.join(HANG_GUARD_SEC)


@pytest.fixture
def pty_emulator():
    """An emulator served on a real pseudo-terminal in a background thread; yields the server."""
    server = PtyServer(make_emulator(32, 48, seed=3))
    thread = serve_in_thread(server)
    yield server
    server.stop.set()
    thread.join(HANG_GUARD_SEC)
