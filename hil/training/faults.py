"""The crash hook for tests: ``HIL_FAULT_AT=<point>:<step>`` ends the process at one point of a step.

It ends the process with ``os._exit`` (no clean-up, no flush of anything but the log), as a
crash or a power cut would, so the tests can check that every such point resumes.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

FAULT_ENV = "HIL_FAULT_AT"
FAULT_POINTS = ("before_checkpoint", "after_checkpoint", "mid_pulses", "after_pulses")
"""Where ``HIL_FAULT_AT`` can end a step: after its compute and write-ahead read but before its checkpoint;
after the checkpoint, before any pulse; after the first half of its devices (in the board's application
order); after all its pulses (and the journal's "sent"), before the reads that follow them and the next
checkpoint."""
FAULT_EXIT_CODE = 86


class FaultHook:
    """The point and step named by ``HIL_FAULT_AT`` (none when it is unset)."""

    def __init__(self, point: str | None = None, step: int = -1):
        self.point, self.step = point, step

    @classmethod
    def from_env(cls) -> "FaultHook":
        spec = os.environ.get(FAULT_ENV)
        if not spec:
            return cls()
        point, _, step = spec.partition(":")
        if point not in FAULT_POINTS or not step.isdigit():
            raise ValueError(f"{FAULT_ENV}={spec!r}: expected <point>:<step> with point one of "
                             f"{', '.join(FAULT_POINTS)}")
        return cls(point, int(step))

    def armed(self, point: str, step: int) -> bool:
        return (self.point, self.step) == (point, step)

    def at(self, point: str, step: int) -> None:
        """End the process here if this is the named point and step."""
        if self.armed(point, step):
            log.error("%s: ending the process at %s of step %d", FAULT_ENV, point, step)
            logging.shutdown()
            os._exit(FAULT_EXIT_CODE)
