"""What both ends of a session share: its limits, control frames (POLL / HAVE bitmaps), HELLO
parameters, session ids, whole messages and the host's figures of link health."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from protocols.framing import MAX_PAYLOAD, PIPELINE_VERSION
from protocols.opcodes import Layout, PayloadError
from protocols.requests import HelloRequest

CHUNK_BYTES = 512
"""Default chunk payload of a version-3 session (see docs/PROTOCOL.md for the reasoning)."""
MIN_CHUNK_BYTES = 64
MAX_MESSAGE_BYTES = 64 << 20
"""Largest request the board collects (bytes); the most reassembly memory it ever holds."""
REASSEMBLY_IDLE_SEC = 30.0
"""An incomplete request with no new chunk for this long is dropped."""
MAX_SESSIONS = 16
"""Sessions the board remembers (least recently opened forgotten first)."""
MAX_IN_FLIGHT = 8
"""Most requests a session may have in flight (version 5; see docs/PROTOCOL.md for the reasoning)."""
DEFAULT_WINDOW = 8
"""The window a host asks for unless told otherwise."""

POLL = 1
"""Control kind, host to board: my bitmap of your reply to (seq, opcode); send what I lack."""
HAVE = 2
"""Control kind, board to host: my bitmap of your request (seq, opcode); resend what I lack."""
_CONTROL = struct.Struct("<BI")


@dataclass(frozen=True)
class Message:
    seq: int
    opcode: int
    status: int
    payload: bytes
    session: int | None = None


@dataclass(frozen=True)
class ControlPayload:
    """``u8 kind | u32 chunk count | bitmap of the chunks held (LSB first)``; count 0 = nothing yet."""

    kind: int
    have: np.ndarray

    def encode(self) -> bytes:
        return _CONTROL.pack(self.kind, self.have.size) + np.packbits(self.have.astype(bool),
                                                                      bitorder="little").tobytes()

    @classmethod
    def decode(cls, payload: bytes) -> ControlPayload:
        if len(payload) < _CONTROL.size:
            raise PayloadError("control frame", "too short")
        kind, count = _CONTROL.unpack_from(payload)
        nbytes = -(-count // 8)
        if len(payload) != _CONTROL.size + nbytes:
            raise PayloadError("control frame", "bitmap length does not match its chunk count")
        bits = np.unpackbits(np.frombuffer(payload, np.uint8, nbytes, _CONTROL.size), bitorder="little")
        return cls(kind, bits[:count].astype(bool))


def encode_control(kind: int, have: np.ndarray) -> bytes:
    return ControlPayload(kind, have).encode()


def decode_control(payload: bytes) -> tuple[int, np.ndarray]:
    c = ControlPayload.decode(payload)
    return c.kind, c.have


def encode_hello(version: int, chunk_bytes: int = CHUNK_BYTES, window: int = 1) -> bytes:
    """HELLO request payload (see :class:`~protocols.requests.HelloRequest`)."""
    return HelloRequest(version, chunk_bytes, window).encode()


def hello_params(payload: bytes, version: int) -> tuple[int, int]:
    """(chunk bytes, window) a HELLO request of frame ``version`` asks for, clamped to what the board allows."""
    hello = HelloRequest.decode(payload, Layout(version))
    chunk = CHUNK_BYTES if hello.chunk_bytes is None else int(min(max(hello.chunk_bytes, MIN_CHUNK_BYTES),
                                                                   MAX_PAYLOAD))
    window = 1
    if version >= PIPELINE_VERSION and hello.window is not None:
        window = int(min(max(hello.window, 1), MAX_IN_FLIGHT))
    return chunk, window


def new_session_id() -> int:
    """A random non-zero 32-bit session id (not a run's random draw: it only names a conversation)."""
    return int.from_bytes(os.urandom(4), "little") or 1


def offset(seq: int, base: int) -> int:
    """How far ``seq`` comes after ``base`` (32-bit serial numbers)."""
    return (seq - base) & 0xFFFFFFFF


@dataclass
class LinkHealth:
    """What a host saw on its link: the figures a timeout message reports."""

    crc_errors: int = 0
    malformed: int = 0
    discarded_bytes: int = 0
    foreign_frames: int = 0
    polls: int = 0
    chunks_resent: int = 0
    frames_ok: int = 0

    def minus(self, other: LinkHealth) -> LinkHealth:
        return LinkHealth(**{k: v - getattr(other, k) for k, v in self.__dict__.items()})

    def describe(self, bytes_rx: int) -> str:
        """One sentence: what arrived, what was damaged, and what to check."""
        damaged = self.crc_errors + self.malformed
        if bytes_rx == 0:
            return ("nothing at all came back (silence): check that the board is powered, connected and running "
                    "the firmware, and the port, host:port and baud rate")
        seen = (f"{bytes_rx} bytes came back, {self.frames_ok} intact frames, {self.crc_errors} CRC errors, "
                f"{self.malformed} malformed frames (resyncs), {self.discarded_bytes} bytes of garbage discarded, "
                f"{self.foreign_frames} frames of other requests or sessions; {self.polls} polls, "
                f"{self.chunks_resent} chunks resent")
        if damaged:
            return (f"the line damaged what the board sent ({seen}): the link is too noisy -- check the cable, "
                    "its shielding and ground, the baud rate on both ends, and that no other program uses the port")
        return (f"the board answered but never this request ({seen}): check that no other host uses the board "
                "and that its firmware speaks this protocol")


class WindowFull(RuntimeError):
    """A request was started while ``window`` requests were in flight, the oldest being ``pending_seq``."""

    def __init__(self, window: int, pending_seq: int | None):
        super().__init__(f"the window of {window} requests is full: wait for the reply to "
                         f"sequence number {pending_seq} before sending another")
        self.window = window
        self.pending_seq = pending_seq


class NothingPending(RuntimeError):
    """A poll was asked for while no request (or not request ``seq``) is in flight."""

    def __init__(self, seq: int | None = None):
        super().__init__("no request is pending")
        self.seq = seq
