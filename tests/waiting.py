"""Waiting in tests without betting on the machine's speed.

A test waits for the event it needs (a line printed, a file grown, a counter
reached), never for a fixed time.  The only wall-clock bound is a hang guard,
:data:`HANG_GUARD_S`, far beyond what a loaded 2-core machine needs: it turns a
hang into a clear failure before pytest-timeout (300 s) kills the whole test.
"""

from __future__ import annotations

import time
from collections.abc import Callable

HANG_GUARD_S = 120.0
"""Bound on any wait whose expiry means "hung", and the instrument/link timeout on success paths."""


def wait_until(condition: Callable[[], bool], what: str, *, timeout_s: float = HANG_GUARD_S,
               poll_s: float = 0.01, alive: Callable[[], None] | None = None) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``.

    ``alive`` is called between polls and should raise if the thing being waited on
    died (a child process that exited, say), so a crash is reported as such, not as
    a hang.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        time.sleep(poll_s)
