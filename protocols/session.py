"""Request/response sessions over the frame layer: sessions, chunk acknowledgements, exactly-once.

Sans-I/O: every class takes the bytes (or frames) that arrived and returns the bytes to
send; the caller owns the port, the socket and the clock.

Version 3 (:class:`ClientSession`, :class:`SessionServer`):

* A host opens a **session** with HELLO under a 32-bit id it chooses at random.  Every
  frame of that conversation carries the id; every reply names session, sequence number
  and opcode, and the host accepts a reply only when all three match its pending request.
  The board's execute-once record and reply cache are per session, so one host's cached
  reply can never answer another host's request.
* A message travels as chunks of at most ``chunk_bytes`` (the host chooses, HELLO).  Lost
  or damaged chunks are resent **individually**: the receiver of a message says which
  chunks it has in a bitmap (a control frame), the sender resends the others.  The host
  drives this: after silence it sends ``POLL`` (its bitmap of the reply); the board answers
  with the reply chunks the host lacks, or, while it is still collecting the request,
  with ``HAVE`` (its bitmap of the request), and the host resends the request chunks the
  board lacks.  Either side also asks at once when the last chunk it expects arrives
  with gaps before it.  So the chance that a message gets through grows with each round
  instead of shrinking with the message's size.
* The board executes each (session, seq) at most once; a request chunk for an executed
  seq is ignored (the host polls for the reply), one for an older seq is stale and dropped.
* The board collects one incoming message at a time, at most :data:`MAX_MESSAGE_BYTES`;
  a longer one is refused with ``BAD_REQUEST``, and a collection is dropped on disconnect,
  after :data:`REASSEMBLY_IDLE_S` without a new chunk, or when another request starts.

Versions 1 and 2 (:class:`LegacyClientSession`, :class:`LegacyServerSession`) have no
session field and resend whole messages; a board keeps serving them.
"""

from __future__ import annotations

import os
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from protocols.framing import (
    DELIMITER,
    FLAG_CONTROL,
    FLAG_RESPONSE,
    FLAG_RETRANSMIT,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Frame,
    FrameDecoder,
    chunk_frames,
    encode_frame,
    encode_message,
)
from protocols.messages import Op, PayloadError, Status, encode_json

CHUNK_BYTES = 512
"""Default chunk payload of a version-3 session (see docs/PROTOCOL.md for the reasoning)."""
MIN_CHUNK_BYTES = 64
MAX_MESSAGE_BYTES = 64 << 20
"""Largest request the board collects (bytes); the most reassembly memory it ever holds."""
REASSEMBLY_IDLE_S = 30.0
"""An incomplete request with no new chunk for this long is dropped."""
MAX_SESSIONS = 16
"""Sessions the board remembers (least recently opened forgotten first)."""

POLL = 1
"""Control kind, host to board: my bitmap of your reply to (seq, opcode); send what I lack."""
HAVE = 2
"""Control kind, board to host: my bitmap of your request (seq, opcode); resend what I lack."""
_CONTROL = struct.Struct("<BI")
_HELLO = struct.Struct("<BH")


@dataclass(frozen=True)
class Message:
    seq: int
    opcode: int
    status: int
    payload: bytes
    session: int | None = None


def encode_control(kind: int, have: np.ndarray) -> bytes:
    """``u8 kind | u32 chunk count | bitmap of the chunks held (LSB first)``; count 0 = nothing yet."""
    return _CONTROL.pack(kind, have.size) + np.packbits(have.astype(bool), bitorder="little").tobytes()


def decode_control(payload: bytes) -> tuple[int, np.ndarray]:
    if len(payload) < _CONTROL.size:
        raise PayloadError("control frame too short")
    kind, count = _CONTROL.unpack_from(payload)
    nbytes = -(-count // 8)
    if len(payload) != _CONTROL.size + nbytes:
        raise PayloadError("control frame: bitmap length does not match its chunk count")
    bits = np.unpackbits(np.frombuffer(payload, np.uint8, nbytes, _CONTROL.size), bitorder="little")
    return kind, bits[:count].astype(bool)


def encode_hello(version: int, chunk_bytes: int = CHUNK_BYTES) -> bytes:
    """HELLO request payload: ``u8 version``, and from version 3 ``u16 chunk_bytes`` for the replies."""
    return bytes([version]) if version < 3 else _HELLO.pack(version, chunk_bytes)


def _hello_chunk_bytes(payload: bytes) -> int:
    if len(payload) >= _HELLO.size:
        return int(min(max(_HELLO.unpack_from(payload)[1], MIN_CHUNK_BYTES), MAX_PAYLOAD))
    return CHUNK_BYTES


def _newer(a: int, b: int) -> bool:
    """True when sequence number ``a`` comes after ``b`` (serial-number arithmetic, 32 bit)."""
    return 0 < ((a - b) & 0xFFFFFFFF) < 0x80000000


def new_session_id() -> int:
    """A random non-zero 32-bit session id (not a run's random draw: it only names a conversation)."""
    return int.from_bytes(os.urandom(4), "little") or 1


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

    def minus(self, other: "LinkHealth") -> "LinkHealth":
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


@dataclass
class _Pending:
    seq: int
    opcode: int
    frames: list[bytes]
    rx: list[bytes | None] = field(default_factory=list)
    got: int = 0
    asked_max: int = -1
    acked: int = 0


class ClientSession:
    """The version-3 host end: one request in flight, chunks acknowledged and resent individually."""

    def __init__(self, session_id: int | None = None, chunk_bytes: int = CHUNK_BYTES, first_seq: int = 1,
                 version: int = PROTOCOL_VERSION):
        self.version = version
        self.session_id = new_session_id() if session_id is None else session_id & 0xFFFFFFFF
        self.chunk_bytes = int(min(max(chunk_bytes, MIN_CHUNK_BYTES), MAX_PAYLOAD))
        self._seq = (first_seq - 1) & 0xFFFFFFFF
        self._decoder = FrameDecoder()
        self._pending: _Pending | None = None
        self._outbox = bytearray()
        self.progress = 0
        """Useful events so far (new reply chunks, request chunks newly acknowledged): a sign of life."""
        self.foreign_frames = 0
        self.polls = 0
        self.chunks_resent = 0

    @property
    def decoder(self) -> FrameDecoder:
        return self._decoder

    @property
    def pending_seq(self) -> int | None:
        return self._pending.seq if self._pending else None

    @property
    def pending_chunks(self) -> int:
        return len(self._pending.frames) if self._pending else 0

    @property
    def reply_started(self) -> bool:
        """Some chunk of the pending request's reply has arrived (the board has executed it)."""
        return bool(self._pending and self._pending.got)

    def hello_payload(self) -> bytes:
        return encode_hello(self.version, self.chunk_bytes)

    def health(self) -> LinkHealth:
        d = self._decoder
        return LinkHealth(d.crc_errors, d.malformed, d.overflow_bytes, self.foreign_frames, self.polls,
                          self.chunks_resent, d.frames_ok)

    def request(self, opcode: int, payload: bytes) -> bytes:
        """Start a new request; returns its wire bytes."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        frames = chunk_frames(seq=self._seq, opcode=opcode, payload=payload, max_payload=self.chunk_bytes,
                              version=self.version, session=self.session_id)
        self._pending = _Pending(self._seq, int(opcode), frames)
        self._outbox.clear()
        return DELIMITER + b"".join(frames)

    def poll(self) -> bytes:
        """After silence: tell the board which reply chunks arrived (none, maybe) and ask for the rest."""
        p = self._pending
        if p is None:
            raise RuntimeError("no request is pending")
        have = np.array([c is not None for c in p.rx], dtype=bool)
        p.asked_max = int(np.flatnonzero(~have).max()) if have.size and not have.all() else len(p.rx) - 1
        self.polls += 1
        return DELIMITER + encode_frame(Frame(self.version, FLAG_CONTROL, p.seq, p.opcode, 0, 0, 1,
                                              encode_control(POLL, have), self.session_id))

    def take_outbox(self) -> bytes:
        """Bytes the session wants sent now (chunks the board asked for, a poll on a gap)."""
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    def receive_data(self, data: bytes) -> Message | None:
        """Feed received bytes; returns the complete reply to the pending request, if it is here."""
        for f in self._decoder.feed(data):
            p = self._pending
            if p is None or not f.is_response or f.seq != p.seq or f.opcode != p.opcode:
                self.foreign_frames += 1
                continue
            if f.session is None:
                # a board without sessions refusing our version: the one reply it can give us
                if f.status == Status.VERSION_MISMATCH and f.chunk_count == 1:
                    self._pending = None
                    return Message(f.seq, f.opcode, f.status, f.payload)
                self.foreign_frames += 1
                continue
            if f.session != self.session_id:
                self.foreign_frames += 1
                continue
            if f.is_control:
                self._on_control(p, f)
                continue
            msg = self._on_chunk(p, f)
            if msg is not None:
                self._pending = None
                self._outbox.clear()
                return msg
        return None

    def _on_control(self, p: _Pending, f: Frame) -> None:
        try:
            kind, have = decode_control(f.payload)
        except PayloadError:
            self._decoder.malformed += 1
            return
        if kind != HAVE:
            return
        if have.size != len(p.frames):
            have = np.zeros(len(p.frames), dtype=bool)  # it has nothing of this request
        n_have = int(have.sum())
        if n_have > p.acked:
            p.acked = n_have
            self.progress += 1
        missing = np.flatnonzero(~have)
        if missing.size:
            self.chunks_resent += int(missing.size)
            self._outbox += DELIMITER + b"".join(p.frames[i] for i in missing)

    def _on_chunk(self, p: _Pending, f: Frame) -> Message | None:
        if len(p.rx) != f.chunk_count:
            p.rx, p.got, p.asked_max = [None] * f.chunk_count, 0, f.chunk_count - 1
        if p.rx[f.chunk_index] is None:
            p.rx[f.chunk_index] = f.payload
            p.got += 1
            self.progress += 1
        if p.got == len(p.rx):
            return Message(f.seq, f.opcode, f.status, b"".join(p.rx), f.session)  # type: ignore[arg-type]
        if f.chunk_index >= p.asked_max:
            self._outbox += self.poll()  # the last chunk it expected came, with gaps before it: ask now
        return None


@dataclass(frozen=True)
class Request:
    """A new request the server must execute, then answer with ``respond``."""

    seq: int
    opcode: int
    payload: bytes
    version: int = PROTOCOL_VERSION
    session: int | None = None


@dataclass
class _Session:
    sid: int
    version: int
    chunk_bytes: int
    last_seq: int | None = None
    last_opcode: int = -1
    reply: list[bytes] = field(default_factory=list)


@dataclass
class _Inbound:
    session: int
    seq: int
    opcode: int
    version: int
    count: int
    last_s: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    nbytes: int = 0
    asked_max: int = -1

    def bitmap(self) -> np.ndarray:
        have = np.zeros(self.count, dtype=bool)
        have[list(self.chunks)] = True
        return have


def _error(f: Frame, status: int, text: str, version: int | None = None) -> bytes:
    """A one-chunk error reply to the request ``f`` belongs to (not cached)."""
    return encode_message(seq=f.seq, opcode=f.opcode, status=status, flags=FLAG_RESPONSE,
                          version=version or f.version, session=f.session,
                          payload=encode_json({"error": text}))


class SessionServer:
    """The version-3 board end: sessions, request collection under a memory cap, selective resending."""

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES, idle_s: float = REASSEMBLY_IDLE_S,
                 clock=time.monotonic):
        self.max_message_bytes = max_message_bytes
        self.idle_s = idle_s
        self._clock = clock
        self._sessions: OrderedDict[int, _Session] = OrderedDict()
        self._inbound: _Inbound | None = None
        self.chunks_resent = 0
        self.stale_requests = 0
        self.duplicate_chunks = 0
        self.refused = 0

    @property
    def reassembly_bytes(self) -> int:
        """Bytes of incomplete requests held (at most ``max_message_bytes``)."""
        return self._inbound.nbytes if self._inbound else 0

    @property
    def sessions(self) -> list[int]:
        return list(self._sessions)

    def drop_incomplete(self) -> None:
        """Forget a request still being collected (its host disconnected)."""
        self._inbound = None

    def receive_frames(self, frames: list[Frame]) -> tuple[list[Request], bytes]:
        """Frames with a session field -> (new requests to execute, in order; bytes to send now)."""
        requests: list[Request] = []
        out = bytearray()
        now = self._clock()
        if self._inbound is not None and now - self._inbound.last_s > self.idle_s:
            self._inbound = None
        for f in frames:
            if f.is_response:
                continue
            if f.version not in SUPPORTED_VERSIONS or f.version < 3:
                if f.chunk_index == 0:
                    out += _error(f, Status.VERSION_MISMATCH,
                                  f"protocol version {f.version} with a session field is not supported; this "
                                  f"firmware speaks versions {', '.join(map(str, SUPPORTED_VERSIONS))}",
                                  version=f.version if 0 < f.version < 256 else PROTOCOL_VERSION)
                continue
            if f.is_control:
                out += self._on_poll(f)
            else:
                req, reply = self._on_chunk(f, now)
                out += reply
                if req is not None:
                    requests.append(req)
        return requests, bytes(out)

    def _on_poll(self, f: Frame) -> bytes:
        st = self._sessions.get(f.session)  # type: ignore[arg-type]
        if st is None:
            return _error(f, Status.BAD_REQUEST, "unknown session: the board was restarted or has forgotten it; "
                                                 "reconnect (a new HELLO opens a new session)")
        try:
            kind, have = decode_control(f.payload)
        except PayloadError:
            return b""
        if kind != POLL:
            return b""
        if st.last_seq == f.seq:
            if st.last_opcode != f.opcode:
                return _error(f, Status.BAD_REQUEST, f"sequence number {f.seq} of this session was used for "
                                                     f"another opcode (0x{st.last_opcode:02x})")
            if have.size != len(st.reply):
                have = np.zeros(len(st.reply), dtype=bool)
            missing = np.flatnonzero(~have)
            self.chunks_resent += int(missing.size)
            return DELIMITER + b"".join(st.reply[i] for i in missing) if missing.size else b""
        inb = self._inbound
        if inb is not None and (inb.session, inb.seq, inb.opcode) == (f.session, f.seq, f.opcode):
            have = inb.bitmap()
            inb.asked_max = int(np.flatnonzero(~have).max())
            return self._have(f, have)
        if st.last_seq is None or _newer(f.seq, st.last_seq):
            return self._have(f, np.zeros(0, dtype=bool))  # nothing of it arrived
        self.stale_requests += 1
        return b""

    def _have(self, f: Frame, have: np.ndarray) -> bytes:
        return DELIMITER + encode_frame(Frame(f.version, FLAG_RESPONSE | FLAG_CONTROL, f.seq, f.opcode, 0, 0, 1,
                                              encode_control(HAVE, have), f.session))

    def _on_chunk(self, f: Frame, now: float) -> tuple[Request | None, bytes]:
        sid: int = f.session  # type: ignore[assignment]
        st = self._sessions.get(sid)
        if st is not None and st.last_seq is not None:
            if f.seq == st.last_seq:
                if f.opcode != st.last_opcode:
                    return None, _error(f, Status.BAD_REQUEST, f"sequence number {f.seq} of this session was used "
                                                               f"for another opcode (0x{st.last_opcode:02x})")
                self.duplicate_chunks += 1  # executed already: the host polls for the reply
                return None, b""
            if not _newer(f.seq, st.last_seq):
                self.stale_requests += 1
                return None, b""
        if st is None and f.opcode != Op.HELLO:
            if f.chunk_index == 0:
                return None, _error(f, Status.BAD_REQUEST, "unknown session: open one with HELLO first (the board "
                                                           "was restarted or has forgotten it; reconnect)")
            return None, b""
        inb = self._inbound
        if inb is None or (inb.session, inb.seq, inb.opcode, inb.count) != (sid, f.seq, f.opcode, f.chunk_count):
            inb = self._inbound = _Inbound(sid, f.seq, f.opcode, f.version, f.chunk_count, now,
                                           asked_max=f.chunk_count - 1)
        inb.last_s = now
        if f.chunk_index in inb.chunks:
            self.duplicate_chunks += 1
        else:
            size = len(f.payload)
            if inb.nbytes + size > self.max_message_bytes or (
                    f.chunk_index < f.chunk_count - 1 and f.chunk_count * size > self.max_message_bytes):
                return None, self._refuse_oversize(f, st)
            inb.chunks[f.chunk_index] = f.payload
            inb.nbytes += size
        if len(inb.chunks) < inb.count:
            if f.chunk_index >= inb.asked_max:  # the last chunk it expected came, with gaps before it
                have = inb.bitmap()
                inb.asked_max = int(np.flatnonzero(~have).max())
                return None, self._have(f, have)
            return None, b""
        self._inbound = None
        payload = b"".join(inb.chunks[i] for i in range(inb.count))
        if st is None:
            st = self._open(sid, f.version, payload)
        st.last_seq, st.last_opcode, st.reply = f.seq, f.opcode, []
        for other in self._sessions.values():
            if other is not st:
                other.reply = []  # one host at a time: only the active session's reply is worth keeping
        return Request(f.seq, f.opcode, payload, f.version, sid), b""

    def _refuse_oversize(self, f: Frame, st: _Session | None) -> bytes:
        self._inbound = None
        self.refused += 1
        reply = _error(f, Status.BAD_REQUEST, f"request larger than the board's limit of {self.max_message_bytes} "
                                              "bytes: split it")
        if st is not None:  # an executed (refused) request: polls get the refusal
            st.last_seq, st.last_opcode, st.reply = f.seq, f.opcode, [reply[1:]]
        return reply

    def _open(self, sid: int, version: int, hello: bytes) -> _Session:
        st = _Session(sid, version, _hello_chunk_bytes(hello))
        self._sessions[sid] = st
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return st

    def respond(self, request: Request, status: int, payload: bytes) -> bytes:
        """Wire bytes of the reply to ``request``; cached for selective resending."""
        st = self._sessions[request.session]  # type: ignore[index]
        frames = chunk_frames(seq=request.seq, opcode=request.opcode, status=status, payload=payload,
                              flags=FLAG_RESPONSE, max_payload=st.chunk_bytes, version=request.version,
                              session=request.session)
        if request.seq == st.last_seq:
            st.reply = frames
        return DELIMITER + b"".join(frames)

    def chunk_bytes(self, session: int | None) -> int:
        st = self._sessions.get(session) if session is not None else None
        return st.chunk_bytes if st else MAX_PAYLOAD


class BusyResponder:
    """Answers every request on a second connection with ``BUSY`` at once: the board has one host at a time."""

    def __init__(self, why: str):
        self.why = why
        self._decoder = FrameDecoder()

    def receive_data(self, data: bytes) -> bytes:
        out = bytearray()
        for f in self._decoder.feed(data):
            if f.is_response or f.chunk_index != 0:
                continue
            out += _error(f, Status.BUSY, self.why,
                          version=f.version if f.version in SUPPORTED_VERSIONS else PROTOCOL_VERSION)
        return bytes(out)


# ---- versions 1 and 2: no sessions, whole-message resends ----------------------------------------------
@dataclass
class _Reassembly:
    seq: int = -1
    opcode: int = 0
    status: int = 0
    count: int = 0
    chunks: dict[int, bytes] = field(default_factory=dict)

    def add(self, f: Frame) -> Message | None:
        if f.seq != self.seq or f.chunk_count != self.count or f.opcode != self.opcode:
            self.seq, self.opcode, self.status, self.count, self.chunks = f.seq, f.opcode, f.status, f.chunk_count, {}
        self.chunks[f.chunk_index] = f.payload
        if len(self.chunks) == self.count:
            payload = b"".join(self.chunks[i] for i in range(self.count))
            msg = Message(self.seq, self.opcode, self.status, payload)
            self.seq, self.chunks = -1, {}
            return msg
        return None

    @property
    def nbytes(self) -> int:
        return sum(len(c) for c in self.chunks.values())


class LegacyClientSession:
    """A version-1/2 host end: stop-and-wait, a retried request resent whole under the same seq."""

    def __init__(self, first_seq: int = 1, max_payload: int = MAX_PAYLOAD, version: int = 2):
        self.version = version
        self._seq = (first_seq - 1) & 0xFFFFFFFF
        self._max_payload = max_payload
        self._decoder = FrameDecoder()
        self._rx = _Reassembly()
        self._pending: tuple[int, int, bytes] | None = None
        self.foreign_frames = 0
        self.polls = 0
        self.progress = 0

    @property
    def decoder(self) -> FrameDecoder:
        return self._decoder

    @property
    def pending_seq(self) -> int | None:
        return self._pending[0] if self._pending else None

    @property
    def pending_chunks(self) -> int:
        return max(1, -(-len(self._pending[2]) // self._max_payload)) if self._pending else 0

    @property
    def reply_started(self) -> bool:
        return bool(self._pending and self._rx.chunks and self._rx.seq == self._pending[0])

    def hello_payload(self) -> bytes:
        return encode_hello(self.version)

    def health(self) -> LinkHealth:
        d = self._decoder
        return LinkHealth(d.crc_errors, d.malformed, d.overflow_bytes, self.foreign_frames, self.polls, 0, d.frames_ok)

    def request(self, opcode: int, payload: bytes) -> bytes:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        self._pending = (self._seq, opcode, payload)
        self._rx = _Reassembly()
        return encode_message(seq=self._seq, opcode=opcode, payload=payload, max_payload=self._max_payload,
                              version=self.version)

    def poll(self) -> bytes:
        """The pending request again, whole, same sequence number, marked as a retransmission."""
        if self._pending is None:
            raise RuntimeError("no request is pending")
        seq, opcode, payload = self._pending
        self.polls += 1
        return encode_message(seq=seq, opcode=opcode, payload=payload, flags=FLAG_RETRANSMIT,
                              max_payload=self._max_payload, version=self.version)

    retransmit = poll

    def take_outbox(self) -> bytes:
        return b""

    def receive_data(self, data: bytes) -> Message | None:
        result = None
        for f in self._decoder.feed(data):
            p = self._pending
            if not f.is_response or p is None or f.seq != p[0] or f.opcode != p[1] or f.session is not None:
                self.foreign_frames += 1
                continue
            self.progress += 1
            msg = self._rx.add(f)
            if msg is not None and result is None:
                result = msg
                self._pending = None
        return result


class LegacyServerSession:
    """The version-1/2 board end: reassembles requests, drops stale copies, replays cached replies."""

    def __init__(self, max_payload: int = MAX_PAYLOAD, max_message_bytes: int = MAX_MESSAGE_BYTES):
        self._max_payload = max_payload
        self.max_message_bytes = max_message_bytes
        self._rx = _Reassembly()
        self._last_seq: int | None = None
        self._last_opcode = -1
        self._last_reply = b""
        self.replays = 0
        self.stale_requests = 0

    @property
    def reassembly_bytes(self) -> int:
        return self._rx.nbytes

    def drop_incomplete(self) -> None:
        self._rx = _Reassembly()

    def receive_frames(self, frames: list[Frame]) -> tuple[list[Request], bytes]:
        """Frames without a session field -> (new requests to execute, bytes to send now for retried ones)."""
        requests: list[Request] = []
        replay = bytearray()
        for f in frames:
            if f.is_response or f.is_control:
                continue
            if self._rx.nbytes + len(f.payload) > self.max_message_bytes:
                self._rx = _Reassembly()
                continue
            msg = self._rx.add(f)
            if msg is None:
                continue
            if f.version not in SUPPORTED_VERSIONS or f.version >= 3:
                replay += encode_message(
                    seq=msg.seq, opcode=msg.opcode, status=Status.VERSION_MISMATCH, flags=FLAG_RESPONSE,
                    version=f.version if 0 < f.version < 256 else PROTOCOL_VERSION,
                    payload=encode_json({"error": f"protocol version {f.version} is not supported without a "
                                                  "session; this firmware speaks versions "
                                                  f"{', '.join(map(str, SUPPORTED_VERSIONS))}"}),
                )
                continue
            if self._last_seq is not None and msg.seq == self._last_seq and msg.opcode == self._last_opcode:
                self.replays += 1
                replay += self._last_reply
                continue
            if msg.opcode != Op.HELLO and self._last_seq is not None and not _newer(msg.seq, self._last_seq):
                self.stale_requests += 1
                continue
            # a new request: anything still pending from before is superseded
            self._last_seq, self._last_opcode = msg.seq, msg.opcode
            self._last_reply = b""
            requests.append(Request(msg.seq, msg.opcode, msg.payload, f.version))
        return requests, bytes(replay)

    def respond(self, request: Request, status: int, payload: bytes) -> bytes:
        wire = encode_message(seq=request.seq, opcode=request.opcode, status=status, payload=payload,
                              flags=FLAG_RESPONSE, max_payload=self._max_payload, version=request.version)
        if request.seq == self._last_seq:
            self._last_reply = wire
        return wire
