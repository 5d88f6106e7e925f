"""I/O with real things: the Board contract and its implementations, safety limits enforced here."""

from drivers.address import open_board
from drivers.board import Board, BoardInfo, BoardStatus, ProgramReport, PulseBatch, PulseReport, Region
from drivers.errors import (
    AddressError,
    BoardError,
    BoardTimeout,
    InstrumentError,
    LimitConflict,
    LimitViolation,
    LinkError,
    ProtocolError,
)
from drivers.limits import PulseProfile, SafetyLimits

__all__ = [
    "open_board", "Board", "BoardInfo", "BoardStatus", "ProgramReport", "PulseBatch", "PulseReport", "Region",
    "AddressError", "BoardError", "BoardTimeout", "InstrumentError", "LimitConflict", "LimitViolation", "LinkError",
    "ProtocolError", "PulseProfile", "SafetyLimits",
]
