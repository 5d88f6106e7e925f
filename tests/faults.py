"""Transport fault injection for tests: links that corrupt, drop, delay and invent bytes.

Seeded, so a failing run can be replayed.  Used only where a fault cannot be
caused otherwise; the bytes still travel through the real codec and, for the
proxy, through real TCP sockets.
"""

from __future__ import annotations

import socket
import threading

from hil.link_faults import ByteMangler, FaultyLink  # noqa: F401  (re-exported for the tests)


class FaultyTcpProxy:
    """A real TCP proxy between a host and a server that mangles bytes in both directions."""

    def __init__(self, target: tuple[str, int], seed: int, **faults):
        self.target = target
        self.seed = seed
        self.faults = faults
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self.stop = threading.Event()
        self.manglers: list[ByteMangler] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(self.target)
            for src, dst, k in ((client, upstream, 0), (upstream, client, 1)):
                m = ByteMangler(self.seed + 10 * n + k, **self.faults)
                self.manglers.append(m)
                threading.Thread(target=self._pump, args=(src, dst, m), daemon=True).start()
            n += 1
        self._sock.close()

    def _pump(self, src: socket.socket, dst: socket.socket, mangle: ByteMangler) -> None:
        src.settimeout(0.1)
        while not self.stop.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                dst.sendall(mangle(data))
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def total_faults(self) -> int:
        return sum(m.faults for m in self.manglers)

    def close(self) -> None:
        self.stop.set()
