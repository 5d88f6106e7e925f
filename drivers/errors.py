"""Typed exceptions raised by every Board implementation.

Callers catch these instead of inspecting return values: a board call either
returns its result or raises one of the classes below, never ``(False, None)``.
"""

from __future__ import annotations


class BoardError(Exception):
    """Base class of every error a board raises."""


class AddressError(BoardError, ValueError):
    """A board address (``--board``) could not be understood or opened."""


class LinkError(BoardError):
    """The byte link to the board failed: port missing, connection lost, no answer."""


class BoardTimeout(LinkError, TimeoutError):
    """The board did not answer within the timeout after every retry."""


class LimitViolation(BoardError, ValueError):
    """A request would exceed the configured safety limits; nothing was sent."""


class ProtocolError(BoardError):
    """The board answered with something the protocol does not allow."""


class InstrumentError(BoardError):
    """The board or an instrument reported an error while executing a request."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class LimitConflict(LimitViolation):
    """Two sets of limits cannot both hold (e.g. pulse-width windows that do not overlap); nothing was sent."""
