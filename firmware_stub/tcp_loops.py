"""Accepting TCP connections and reading from them until told to stop: the loops the emulators' two servers share.

The FPGA firmware's server (:mod:`firmware_stub.serve`) and the SCPI instrument servers
(:mod:`firmware_stub.scpi.server`) each poll a listening socket (created with a short timeout,
so that a stop is noticed) and hand every connection to a thread of their own, which reads it
(again with a short timeout) until the host hangs up or the server stops.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator


def accepted(sock: socket.socket, stop: threading.Event) -> Iterator[tuple[socket.socket, tuple]]:
    """``(connection, peer)`` for every host that connects, until ``stop`` is set or the socket closes."""
    while not stop.is_set():
        try:
            yield sock.accept()
        except TimeoutError:
            continue
        except OSError:  # closed under us: the server is shutting down
            return


def received(conn: socket.socket, stop: threading.Event, chunk: int = 65536) -> Iterator[bytes]:
    """The bytes a host sends on ``conn`` (set up with a short timeout), until it hangs up, the connection
    fails, or ``stop`` is set."""
    while not stop.is_set():
        try:
            data = conn.recv(chunk)
        except TimeoutError:
            continue
        except OSError:
            return
        if not data:
            return
        yield data
