"""One emulated instrument on one TCP port: a raw SCPI socket (newline-terminated lines).

Hosts reach it through pyvisa-py as ``TCPIP::127.0.0.1::PORT::SOCKET`` with ``\\n``
read and write terminations, exactly like the raw-socket port (5025) of a LAN
instrument.  Every connection gets its own thread; the instrument's state is shared
(and serialised by the bench lock), so a host that reconnects finds the instrument
as it left it -- outputs included, as with a real instrument whose cable was pulled.

Fault injection for tests (:meth:`drop_after`, :meth:`drop_connections`) simulates
a lost LAN link: the server resets the connection without answering.  A reset, not
an orderly close: the host learns of it at once, as a typed link error, instead of
after its read timeout (pyvisa-py treats an orderly close as "no data yet"), so
tests of a lost link need no short timeout that a busy machine could also hit.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading

from firmware_stub.scpi.instrument import EmulatedInstrument
from firmware_stub.tcp_loops import accepted, received

log = logging.getLogger(__name__)
_MAX_LINE = 1 << 20
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class ScpiTcpServer:
    """Serves ``instrument`` on ``host:port`` (port 0 picks a free one) until :meth:`stop`."""

    def __init__(self, instrument: EmulatedInstrument, host: str = "127.0.0.1", port: int = 0):
        self.instrument = instrument
        self._sock = socket.create_server((host, port))
        self._sock.settimeout(0.1)
        self.host, self.port = self._sock.getsockname()[:2]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._drop_countdown: int | None = None
        self._thread: threading.Thread | None = None
        self.connections_total = 0

    @property
    def resource(self) -> str:
        """The VISA resource string of this instrument."""
        return f"TCPIP::{self.host}::{self.port}::SOCKET"

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> "ScpiTcpServer":
        self._thread = threading.Thread(target=self._serve, name=f"scpi-{self.instrument.kind}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.drop_connections()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def stopped(self) -> threading.Event:
        return self._stop

    # ---- faults ------------------------------------------------------------------------------
    def drop_connections(self) -> None:
        """Close every open host connection now."""
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            _reset_on_close(c)
            try:
                # wakes the connection's thread without sending a FIN: once a host has seen a FIN,
                # Linux reports the reset that follows as a mere end of file (no error, a read timeout)
                c.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            c.close()

    def drop_after(self, n_messages: int) -> None:
        """Answer ``n_messages`` more program messages, then drop the connection when the next one arrives."""
        with self._lock:
            self._drop_countdown = int(n_messages)

    # ---- serving -------------------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            for conn, peer in accepted(self._sock, self._stop):
                self.connections_total += 1
                with self._lock:
                    self._conns.add(conn)
                threading.Thread(target=self._pump, args=(conn, peer), daemon=True,
                                 name=f"scpi-{self.instrument.kind}-conn").start()
        finally:
            self._sock.close()

    def _pump(self, conn: socket.socket, peer) -> None:
        log.info("%s: host connected from %s:%s", self.instrument.kind, *peer[:2])
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(0.1)
        buf = b""
        try:
            for data in received(conn, self._stop):
                if _QUICKACK is not None:  # answer like an instrument: no delayed ACK for small writes
                    try:
                        conn.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
                    except OSError:
                        pass
                buf += data
                if len(buf) > _MAX_LINE:
                    self.instrument.push_error(-363, "Input buffer overrun")
                    buf = b""
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if self._should_drop():
                        log.warning("%s: dropping the connection (fault injection)", self.instrument.kind)
                        _reset_on_close(conn)
                        return
                    reply = self.instrument.process(line.decode("latin-1"))
                    if reply is not None:
                        try:
                            conn.sendall(reply.encode("latin-1") + b"\n")
                        except OSError:
                            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass
            log.info("%s: host disconnected", self.instrument.kind)

    def _should_drop(self) -> bool:
        with self._lock:
            if self._drop_countdown is None:
                return False
            if self._drop_countdown <= 0:
                self._drop_countdown = None
                return True
            self._drop_countdown -= 1
            return False


def _reset_on_close(conn: socket.socket) -> None:
    """Make closing ``conn`` send a TCP reset (SO_LINGER on, zero linger time)."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
