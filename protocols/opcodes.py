"""Opcodes, status codes, the payload error and the layout context shared by every message of the FPGA protocol.

A payload's bytes do not say everything about their layout: the protocol version (frame header) and,
from version 4 on, the converters' widths (HELLO) decide some of it.  :class:`Layout` carries that
context to every ``encode``/``decode`` of :mod:`protocols.messages`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from protocols.framing import PACKED_CODES_VERSION, PROTOCOL_VERSION
from protocols.unit_names import from_wire, to_wire


class Op(IntEnum):
    HELLO = 0x01
    STATUS = 0x02
    SET_PROFILES = 0x10
    PULSE = 0x20
    READ_REGION = 0x30
    READ_CELLS = 0x31
    VMM = 0x40
    PROGRAM = 0x50
    FORM = 0x52
    IV_SWEEP = 0x54
    CLOCK = 0x60
    WAIT = 0x61
    SAFE_IDLE = 0x70
    SNAPSHOT = 0x7C
    RESTORE = 0x7D
    TRUE_PARAMS = 0x7E


class Status(IntEnum):
    OK = 0
    UNKNOWN_OPCODE = 1
    BAD_REQUEST = 2
    LIMIT_VIOLATION = 3
    UNSUPPORTED = 4
    BUSY = 5
    INTERNAL = 6
    VERSION_MISMATCH = 7


def status_name(status: int) -> str:
    """``Status`` member name of a status code, or the number of one this codec does not know."""
    return Status(status).name if status in Status._value2member_map_ else str(status)


class PayloadError(ValueError):
    """A payload does not have the layout its opcode requires: ``what`` (the message) and ``detail``."""

    def __init__(self, what: str, detail: str):
        super().__init__(f"{what}: {detail}")
        self.what = what
        self.detail = detail


@dataclass(frozen=True)
class Layout:
    """What a payload's layout depends on besides its bytes.

    ``dac_bits``/``adc_bits``: widths of the packed VMM converter codes (version 4 on), None for the
    byte-wide codes of versions 1 to 3.
    """

    version: int = PROTOCOL_VERSION
    dac_bits: int | None = None
    adc_bits: int | None = None

    @classmethod
    def for_converters(cls, version: int, dac_bits: int, adc_bits: int) -> Layout:
        """The layout of ``version`` on a board with these converters (packed from version 4 on)."""
        packed = version >= PACKED_CODES_VERSION
        return cls(version, dac_bits if packed else None, adc_bits if packed else None)


def unpack(fmt: struct.Struct, data: bytes, what: str, offset: int = 0) -> tuple:
    if len(data) < offset + fmt.size:
        raise PayloadError(what, f"payload of {len(data)} bytes is shorter than the {offset + fmt.size} required")
    return fmt.unpack_from(data, offset)


def expect_end(data: bytes, offset: int, what: str) -> None:
    if offset != len(data):
        raise PayloadError(what, f"{len(data) - offset} unexpected trailing bytes")


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON with sorted keys: one encoding per value; seconds keys as version 3 spells them
    (``_s``, :func:`protocols.unit_names.to_wire`)."""
    return json.dumps(to_wire(obj), separators=(",", ":"), sort_keys=True).encode()


def decode_json(data: bytes, what: str) -> Any:
    try:
        obj = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(what, f"not valid UTF-8 JSON ({exc})") from None
    return from_wire(obj)
