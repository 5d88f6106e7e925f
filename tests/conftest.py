"""Shared fixtures: emulated boards in-process, on a real pseudo-terminal and on a real TCP socket."""

from __future__ import annotations

import pytest

from drivers.address import open_board
from firmware_stub.firmware import make_emulator
from firmware_stub.serve import PtyServer, TcpServer, serve_in_thread


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
    thread.join(5)


@pytest.fixture
def pty_emulator():
    """An emulator served on a real pseudo-terminal in a background thread; yields the server."""
    server = PtyServer(make_emulator(32, 48, seed=3))
    thread = serve_in_thread(server)
    yield server
    server.stop.set()
    thread.join(5)
