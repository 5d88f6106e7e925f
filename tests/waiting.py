"""Waiting in tests without betting on the machine's speed.

A test waits for the event it needs (a line printed, a file grown, a counter
reached), never for a fixed time.  The only wall-clock bound is a hang guard,
:data:`HANG_GUARD_SEC`, far beyond what a loaded 2-core machine needs: it turns a
hang into a clear failure before pytest-timeout (300 s) kills the whole test.
"""

from __future__ import annotations

import time
from collections.abc import Callable

HANG_GUARD_SEC = 120.0
"""Bound on any wait whose expiry means "hung", and the instrument/link timeout on success paths."""


def wait_until(condition: Callable[[], bool], what: str, *, timeout_sec: float = HANG_GUARD_SEC,
               poll_sec: float = 0.01, alive: Callable[[], None] | None = None) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_sec``.

    ``alive`` is called between polls and should raise if the thing being waited on
    died (a child process that exited, say), so a crash is reported as such, not as
    a hang.
    """
    deadline = time.monotonic() + timeout_sec
    while not condition():
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_sec:g} s")
        time.sleep(poll_sec)


class RequestGate:
    """Stands between a served emulator and its host: holds the host's requests once ``may_pass`` says no.

    Wraps a :class:`~firmware_stub.firmware.FirmwareEndpoint` (give it to a PtyServer or
    TcpServer in its place).  While ``may_pass()`` is true, bytes go through; the first
    request after it turns false is held -- the host sits waiting for the reply -- and
    :attr:`holding` is set.  :meth:`release` lets it through (and everything after);
    :meth:`discard` drops it, as if it had never been sent, and lets everything after
    through.  So a test can act on a process at a known point of its run -- after at
    least N training steps, before the end -- however fast or slow the machine is.
    """

    def __init__(self, endpoint, may_pass: Callable[[], bool]):
        import threading

        self.endpoint = endpoint
        self.may_pass = may_pass
        self.holding = threading.Event()
        self._open = threading.Event()
        self._drop_held = False

    def receive(self, data: bytes) -> bytes:
        if not self._open.is_set() and not self.may_pass():
            self.holding.set()
            self._open.wait()
            if self._drop_held:
                self._drop_held = False
                return b""
        return self.endpoint.receive(data)

    def release(self) -> None:
        self._open.set()

    def discard(self) -> None:
        self._drop_held = self.holding.is_set() and not self._open.is_set()
        self._open.set()


def stop_process(proc) -> None:
    """SIGTERM, as a user's Ctrl-C or service manager would, and wait for the exit (killed if it hangs)."""
    import signal
    import subprocess

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(HANG_GUARD_SEC)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
