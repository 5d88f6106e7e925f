"""Serving the firmware emulator over real OS I/O: a pseudo-terminal or a TCP socket.

Both servers pump bytes between the OS and a :class:`FirmwareEndpoint` until
``stop`` is set.  The emulated array outlives connections: a host that reconnects
finds the array as it left it, exactly like a real board that stays powered.

The TCP server has one host at a time, like a serial line, but it does not leave a
second host waiting in the listen queue: every connection is accepted, and one made
while another host holds the board gets ``BUSY`` for each request at once.  When the
holding host disconnects, the endpoint drops whatever half-received request it left.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import tty
from collections.abc import Callable

from firmware_stub.firmware import FirmwareEndpoint
from firmware_stub.tcp_loops import accepted, received
from protocols.session import BusyResponder

log = logging.getLogger(__name__)
_CHUNK = 65536


def _write_all_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        _, writable, _ = select.select([], [fd], [], 1.0)
        if writable:
            n = os.write(fd, view)
            view = view[n:]


class PtyServer:
    """The emulator behind a pseudo-terminal; hosts open :attr:`path` like a serial port."""

    def __init__(self, endpoint: FirmwareEndpoint):
        self.endpoint = endpoint
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing, no CR/LF translation
        self.path = os.ttyname(self._slave)
        os.set_blocking(self._master, False)
        self.stop = threading.Event()

    def serve_forever(self) -> None:
        try:
            while not self.stop.is_set():
                readable, _, _ = select.select([self._master], [], [], 0.1)
                if not readable:
                    continue
                try:
                    data = os.read(self._master, _CHUNK)
                except BlockingIOError:
                    continue
                except OSError as exc:  # EIO: every slave handle closed; ours keeps it open, so unusual
                    log.warning("pty read failed: %s", exc)
                    continue
                out = self.endpoint.receive(data)
                if out:
                    _write_all_fd(self._master, out)
        finally:
            self.close()

    def close(self) -> None:
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass


class TcpServer:
    """The emulator on a TCP port: one host at a time (like a serial line); others get ``BUSY`` at once."""

    def __init__(self, endpoint: FirmwareEndpoint, host: str = "127.0.0.1", port: int = 0):
        self.endpoint = endpoint
        self._sock = socket.create_server((host, port), reuse_port=False)
        self._sock.settimeout(0.1)
        self.host, self.port = self._sock.getsockname()[:2]
        self.stop = threading.Event()
        self._owner_lock = threading.Lock()
        self._owner: tuple | None = None
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    def serve_forever(self, on_connection: Callable[[tuple], None] | None = None) -> None:
        try:
            for conn, peer in accepted(self._sock, self.stop):
                log.info("host connected from %s:%s", *peer[:2])
                if on_connection:
                    on_connection(peer)
                t = threading.Thread(target=self._serve_connection, args=(conn, peer), daemon=True)
                t.start()
                self._threads = [x for x in self._threads if x.is_alive()] + [t]
        finally:
            self._sock.close()
            for t in self._threads:
                t.join(5)

    def _serve_connection(self, conn: socket.socket, peer: tuple) -> None:
        with self._owner_lock:
            owner = self._owner
            if owner is None:
                self._owner = peer
        with conn:
            if owner is None:
                try:
                    self._pump(conn, self.endpoint.receive)
                finally:
                    self.endpoint.disconnect()
                    with self._owner_lock:
                        self._owner = None
                    log.info("host disconnected")
            else:
                busy = BusyResponder(f"the board is in use by another host (connected from {owner[0]}:{owner[1]}); "
                                     "try again when it has disconnected")
                self._pump(conn, busy.receive_data)
                log.info("busy connection from %s:%s closed", *peer[:2])

    def _pump(self, conn: socket.socket, handle: Callable[[bytes], bytes]) -> None:
        conn.settimeout(0.1)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for data in received(conn, self.stop, _CHUNK):
            out = handle(data)
            if out:
                try:
                    conn.sendall(out)
                except OSError:
                    return


def serve_in_thread(server: PtyServer | TcpServer) -> threading.Thread:
    """Run ``server.serve_forever`` in a daemon thread; set ``server.stop`` to end it."""
    t = threading.Thread(target=server.serve_forever, name=type(server).__name__, daemon=True)
    t.start()
    return t
