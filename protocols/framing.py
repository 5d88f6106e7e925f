"""Frames on the byte stream: COBS-stuffed, zero-delimited, CRC-32 protected.

A frame on the wire is ``COBS(header | payload | crc32) 0x00``.  COBS removes every
zero byte from the body, so the delimiter alone marks frame ends: after garbage,
a dropped byte or a partial read the decoder throws away at most the frames the
damage touched and picks up again at the next delimiter.  The CRC (zlib's CRC-32,
little endian, over header and payload) rejects frames that the damage did not cut.

Header (little endian, 12 bytes):

=====  ======  ===========================================================
bytes  type    field
=====  ======  ===========================================================
0      u8      protocol version
1      u8      flags: bit0 response, bit1 retransmission, bit2 session, bit3 control,
               bit4 after-previous (version 5)
2-5    u32     sequence number of the request (echoed by its response)
6      u8      opcode
7      u8      status (0 in requests)
8-9    u16     chunk index
10-11  u16     chunk count (a message larger than one chunk is split)
12-15  u32     session id, present only when flags bit2 is set (version 3)
=====  ======  ===========================================================

The session field extends the header instead of reshaping it, so the first 12 bytes
mean the same in every version: a version-2 board parses a version-3 HELLO far
enough to refuse it with ``VERSION_MISMATCH``, and a version-3 host reads that
refusal (which carries no session field) -- version negotiation keeps working.
Flags bit3 marks a control frame (chunk acknowledgements, :mod:`protocols.session`); bit4 marks
a pipelined request that must be executed right after the previous sequence number (version 5).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from cobs import cobs

PROTOCOL_VERSION = 5
"""The version this codec speaks by default.  2 added per-device pulse widths to PULSE; 3 added
sessions and selective retransmission of chunks; 4 sends VMM converter codes at the converters'
widths (DAC codes at ``dac_bits``, ADC codes at ``adc_bits``, bit-packed); 5 pipelines requests
(a window of requests in flight per session, negotiated in HELLO; flags bit 4 orders them)."""
SESSION_VERSION = 3
"""First version with sessions and chunked retransmission (every later version has them)."""
PACKED_CODES_VERSION = 4
"""First version whose VMM codes are bit-packed at the converters' widths."""
PIPELINE_VERSION = 5
"""First version with several requests in flight per session."""
SUPPORTED_VERSIONS = (1, 2, 3, 4, 5)
"""Versions a server answers (each in the request's own version)."""
MAX_PAYLOAD = 16384
"""Largest payload of one frame, bytes; longer messages are split into chunks."""
MAX_CHUNKS = 0xFFFF
DELIMITER = b"\x00"

HEADER = struct.Struct("<BBIBBHH")
SESSION = struct.Struct("<I")
CRC = struct.Struct("<I")
FLAG_RESPONSE = 0x01
FLAG_RETRANSMIT = 0x02
FLAG_SESSION = 0x04
"""The header carries a u32 session id after the 12 common bytes (version 3)."""
FLAG_CONTROL = 0x08
"""A control frame (poll / chunk bitmap) rather than a chunk of a message."""
FLAG_AFTER_PREVIOUS = 0x10
"""A request (version 5) the board must execute only right after ``seq - 1`` of its session: the host
had older requests in flight when it sent it.  Without the flag a newer request supersedes older ones."""
# a COBS body grows by at most one byte in 254
MAX_ENCODED = (HEADER.size + SESSION.size + MAX_PAYLOAD + CRC.size) * 255 // 254 + 2


@dataclass(frozen=True)
class Frame:
    version: int
    flags: int
    seq: int
    opcode: int
    status: int
    chunk_index: int
    chunk_count: int
    payload: bytes
    session: int | None = None
    """Session id of a version-3 frame; None for a frame without the session field."""

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_RESPONSE)

    @property
    def is_control(self) -> bool:
        return bool(self.flags & FLAG_CONTROL)


def encode_frame(frame: Frame) -> bytes:
    """Wire bytes of one frame, delimiter included."""
    if len(frame.payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(frame.payload)} bytes exceeds MAX_PAYLOAD={MAX_PAYLOAD}")
    flags = frame.flags | FLAG_SESSION if frame.session is not None else frame.flags & ~FLAG_SESSION
    body = HEADER.pack(
        frame.version, flags, frame.seq & 0xFFFFFFFF, frame.opcode, frame.status,
        frame.chunk_index, frame.chunk_count,
    )
    if frame.session is not None:
        body += SESSION.pack(frame.session & 0xFFFFFFFF)
    body += frame.payload
    body += CRC.pack(zlib.crc32(body))
    return cobs.encode(body) + DELIMITER


def chunk_frames(
    *, seq: int, opcode: int, payload: bytes, status: int = 0, flags: int = 0,
    max_payload: int = MAX_PAYLOAD, version: int = PROTOCOL_VERSION, session: int | None = None,
) -> list[bytes]:
    """The wire bytes of each chunk of a message (no leading delimiter), for selective resending."""
    n = max(1, -(-len(payload) // max_payload))
    if n > MAX_CHUNKS:
        raise ValueError(f"message of {len(payload)} bytes needs {n} chunks; at most {MAX_CHUNKS} are allowed")
    view = memoryview(payload)
    return [encode_frame(Frame(version, flags, seq, opcode, status, i, n,
                               bytes(view[i * max_payload:(i + 1) * max_payload]), session))
            for i in range(n)]


def encode_message(
    *, seq: int, opcode: int, payload: bytes, status: int = 0, flags: int = 0,
    max_payload: int = MAX_PAYLOAD, version: int = PROTOCOL_VERSION, session: int | None = None,
) -> bytes:
    """Wire bytes of a whole message, split into as many chunks as it needs.

    The message starts with a delimiter too, so that garbage left on the line
    before it (a half frame from a crashed peer, line noise) ends there instead of
    spoiling the message's first frame.
    """
    return DELIMITER + b"".join(chunk_frames(seq=seq, opcode=opcode, payload=payload, status=status, flags=flags,
                                             max_payload=max_payload, version=version, session=session))


class FrameDecoder:
    """Incremental decoder: feed it any slices of the byte stream, get whole valid frames back.

    Counts what it had to throw away (``crc_errors``, ``malformed``,
    ``overflow_bytes``) so a link's health can be reported.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.crc_errors = 0
        self.malformed = 0
        self.overflow_bytes = 0
        self.frames_ok = 0

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        start = 0
        buf = self._buf
        while True:
            end = buf.find(0, start)
            if end < 0:
                break
            if end > start:
                frame = self._parse(bytes(buf[start:end]))
                if frame is not None:
                    frames.append(frame)
            start = end + 1
        del buf[:start]
        if len(buf) > MAX_ENCODED:
            # no delimiter for longer than any valid frame: this is garbage, keep only the tail
            self.overflow_bytes += len(buf)
            buf.clear()
        return frames

    def _parse(self, encoded: bytes) -> Frame | None:
        if len(encoded) > MAX_ENCODED:
            self.malformed += 1
            return None
        try:
            body = cobs.decode(encoded)
        except cobs.DecodeError:
            self.malformed += 1
            return None
        if len(body) < HEADER.size + CRC.size:
            self.malformed += 1
            return None
        (crc,) = CRC.unpack_from(body, len(body) - CRC.size)
        if zlib.crc32(memoryview(body)[: len(body) - CRC.size]) != crc:
            self.crc_errors += 1
            return None
        version, flags, seq, opcode, status, idx, count = HEADER.unpack_from(body)
        start, session = HEADER.size, None
        if flags & FLAG_SESSION:
            if len(body) < HEADER.size + SESSION.size + CRC.size:
                self.malformed += 1
                return None
            (session,) = SESSION.unpack_from(body, HEADER.size)
            start += SESSION.size
        if count == 0 or idx >= count:
            self.malformed += 1
            return None
        self.frames_ok += 1
        return Frame(version, flags, seq, opcode, status, idx, count, body[start: len(body) - CRC.size], session)
