"""Byte-level fault injection on a link: corrupt, drop, delay and invent bytes (seeded, replayable);
and a link with a fixed latency.

Used by ``hil bench`` to measure goodput under loss and by the tests; the bytes still go
through the real codec.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np


class ByteMangler:
    """Applies byte-level faults to chunks of a stream."""

    def __init__(self, seed: int, drop: float = 0.0, corrupt: float = 0.0, garbage: float = 0.0):
        self.rng = np.random.default_rng(seed)
        self.drop, self.corrupt, self.garbage = drop, corrupt, garbage
        self.faults = 0

    def __call__(self, data: bytes) -> bytes:
        if not data:
            return data
        a = np.frombuffer(data, dtype=np.uint8).copy()
        flip = self.rng.random(a.size) < self.corrupt
        a[flip] ^= self.rng.integers(1, 256, size=int(flip.sum()), dtype=np.uint8)
        keep = self.rng.random(a.size) >= self.drop
        self.faults += int(flip.sum()) + int((~keep).sum())
        out = a[keep].tobytes()
        if self.rng.random() < self.garbage:
            pos = int(self.rng.integers(0, len(out) + 1))
            junk = self.rng.integers(0, 256, size=int(self.rng.integers(1, 40)), dtype=np.uint8).tobytes()
            out = out[:pos] + junk + out[pos:]
            self.faults += 1
        return out


class _WrappedLink:
    """A link around another (``inner``): byte counts and closing are the inner link's."""

    inner: object

    @property
    def bytes_tx(self) -> int:
        return self.inner.bytes_tx

    @property
    def bytes_rx(self) -> int:
        return self.inner.bytes_rx

    def close(self) -> None:
        self.inner.close()


class FaultyLink(_WrappedLink):
    """Wraps a Link; mangles both directions and sometimes holds replies back (delay)."""

    def __init__(self, inner, seed: int, drop=0.002, corrupt=0.002, garbage=0.05, delay=0.1):
        self.inner = inner
        self.tx = ByteMangler(seed, drop, corrupt, garbage)
        self.rx = ByteMangler(seed + 1, drop, corrupt, garbage)
        self.rng = np.random.default_rng(seed + 2)
        self.delay = delay
        self._held = b""

    def write(self, data: bytes) -> None:
        self.inner.write(self.tx(data))

    def read(self, timeout_sec: float) -> bytes:
        data = self._held + self.rx(self.inner.read(timeout_sec))
        self._held = b""
        if data and self.rng.random() < self.delay:
            self._held = data  # arrives late: after the host has given up and retransmitted
            return b""
        return data



class DelayedLink(_WrappedLink):
    """A fixed link latency: what the far end answers becomes readable ``turnaround_sec`` after the write
    that caused it (a USB-serial adapter adds about 1 ms per turnaround).

    Wraps a link whose far end answers within the write (:class:`~drivers.links.InProcessLink`), so the
    delay is exact and needs no second thread; several requests written back to back are all under way
    at once, as on a real line.
    """

    def __init__(self, inner, turnaround_sec: float):
        self.inner = inner
        self.turnaround_sec = turnaround_sec
        self._queue: deque[tuple[float, bytes]] = deque()
        self.waits = 0
        """Reads that had to wait for an answer still under way: the turnarounds the host sat through."""

    def write(self, data: bytes) -> None:
        self.inner.write(data)
        answer = self.inner.read(0.0)
        if answer:
            self._queue.append((time.monotonic() + self.turnaround_sec, answer))

    def read(self, timeout_sec: float) -> bytes:
        if not self._queue:
            time.sleep(min(timeout_sec, 0.01))  # nothing under way: an idle line
            return b""
        wait_sec = self._queue[0][0] - time.monotonic()
        if wait_sec > timeout_sec:
            self.waits += 1
            time.sleep(max(timeout_sec, 0.0))
            return b""
        if wait_sec > 0:
            self.waits += 1
            time.sleep(wait_sec)
        now, out = time.monotonic(), []
        while self._queue and self._queue[0][0] <= now:
            out.append(self._queue.popleft()[1])
        return b"".join(out)

