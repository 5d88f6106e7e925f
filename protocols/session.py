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
* Version 5 pipelines: a host may have a window of requests in flight (asked for in HELLO,
  at most :data:`MAX_IN_FLIGHT`).  The board executes them strictly in sequence order (a
  request sent with older ones in flight carries :data:`~protocols.framing.FLAG_AFTER_PREVIOUS`
  and waits for its predecessor) and caches the replies of the last ``window`` executed ones,
  so a lost reply of any request in flight is replayed, never re-executed.
* The board holds at most a window of incoming requests, together at most
  :data:`MAX_MESSAGE_BYTES`; a longer one is refused with ``BAD_REQUEST``, and held requests
  are dropped on disconnect, after :data:`REASSEMBLY_IDLE_S` without a new chunk, or when a
  newer request without the ordering flag executes.

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
    FLAG_AFTER_PREVIOUS,
    FLAG_CONTROL,
    FLAG_RESPONSE,
    FLAG_RETRANSMIT,
    MAX_PAYLOAD,
    PIPELINE_VERSION,
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
MAX_IN_FLIGHT = 8
"""Most requests a session may have in flight (version 5; see docs/PROTOCOL.md for the reasoning)."""
DEFAULT_WINDOW = 8
"""The window a host asks for unless told otherwise."""

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


def encode_hello(version: int, chunk_bytes: int = CHUNK_BYTES, window: int = 1) -> bytes:
    """HELLO request payload: ``u8 version``, from version 3 ``u16 chunk_bytes`` for the replies, and from
    version 5 ``u8 window``, the requests the host wants in flight at once."""
    if version < 3:
        return bytes([version])
    return _HELLO.pack(version, chunk_bytes) + (bytes([window]) if version >= PIPELINE_VERSION else b"")


def hello_params(payload: bytes, version: int) -> tuple[int, int]:
    """(chunk bytes, window) a HELLO request asks for, clamped to what the board allows."""
    chunk = CHUNK_BYTES
    if len(payload) >= _HELLO.size:
        chunk = int(min(max(_HELLO.unpack_from(payload)[1], MIN_CHUNK_BYTES), MAX_PAYLOAD))
    window = 1
    if version >= PIPELINE_VERSION and len(payload) > _HELLO.size:
        window = int(min(max(payload[_HELLO.size], 1), MAX_IN_FLIGHT))
    return chunk, window


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
    """The host end of a session (version 3 on): a window of requests in flight, chunks acknowledged
    and resent individually.

    The window is 1 until :meth:`grant` widens it (after HELLO, version 5).  A request sent while
    older ones are still in flight carries :data:`FLAG_AFTER_PREVIOUS`, so the board executes it
    only right after the previous sequence number: ordering is as if each had been waited for.
    """

    def __init__(self, session_id: int | None = None, chunk_bytes: int = CHUNK_BYTES, first_seq: int = 1,
                 version: int = PROTOCOL_VERSION, window: int = 1):
        self.version = version
        self.session_id = new_session_id() if session_id is None else session_id & 0xFFFFFFFF
        self.chunk_bytes = int(min(max(chunk_bytes, MIN_CHUNK_BYTES), MAX_PAYLOAD))
        self.asked_window = int(min(max(window, 1), MAX_IN_FLIGHT)) if version >= PIPELINE_VERSION else 1
        """The window this host asks for in HELLO."""
        self.window = 1
        """Requests that may be in flight at once (1 until the board grants more)."""
        self._seq = (first_seq - 1) & 0xFFFFFFFF
        self._decoder = FrameDecoder()
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._ready: OrderedDict[int, Message] = OrderedDict()
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
    def in_flight(self) -> int:
        """Requests sent whose reply has not arrived complete."""
        return len(self._pending)

    @property
    def seq(self) -> int:
        """Sequence number of the newest request."""
        return self._seq

    @property
    def window_full(self) -> bool:
        """No new request may be sent yet: the window spans the sequence numbers from the oldest request in
        flight on (answered ones after it included), so the board's replay cache of ``window`` replies always
        holds every reply the host may still poll for."""
        oldest = self.pending_seq
        return oldest is not None and ((self._seq - oldest + 1) & 0xFFFFFFFF) >= self.window

    @property
    def pending_seq(self) -> int | None:
        """The oldest request in flight."""
        return next(iter(self._pending), None)

    @property
    def pending_chunks(self) -> int:
        p = self._oldest()
        return len(p.frames) if p else 0

    @property
    def reply_started(self) -> bool:
        """Some chunk of the oldest pending request's reply has arrived (the board has executed it)."""
        p = self._oldest()
        return bool(p and p.got)

    def reply_started_for(self, seq: int) -> bool:
        p = self._pending.get(seq)
        return bool(p and p.got)

    def _oldest(self) -> _Pending | None:
        return next(iter(self._pending.values()), None)

    def hello_payload(self) -> bytes:
        return encode_hello(self.version, self.chunk_bytes, self.asked_window)

    def grant(self, board_max: int) -> int:
        """The board's HELLO announced ``board_max`` requests in flight: the window is the smaller of it and ours."""
        self.window = max(1, min(self.asked_window, int(board_max))) if self.version >= PIPELINE_VERSION else 1
        return self.window

    def health(self) -> LinkHealth:
        d = self._decoder
        return LinkHealth(d.crc_errors, d.malformed, d.overflow_bytes, self.foreign_frames, self.polls,
                          self.chunks_resent, d.frames_ok)

    def request(self, opcode: int, payload: bytes) -> bytes:
        """Start a new request; returns its wire bytes.  The window must have room (see :attr:`in_flight`)."""
        if self.window_full:
            raise RuntimeError(f"the window of {self.window} requests is full: wait for the reply to "
                               f"sequence number {self.pending_seq} before sending another")
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        flags = FLAG_AFTER_PREVIOUS if self._pending and self.version >= PIPELINE_VERSION else 0
        frames = chunk_frames(seq=self._seq, opcode=opcode, payload=payload, max_payload=self.chunk_bytes,
                              version=self.version, session=self.session_id, flags=flags)
        self._pending[self._seq] = _Pending(self._seq, int(opcode), frames)
        return DELIMITER + b"".join(frames)

    def poll(self, seq: int | None = None) -> bytes:
        """After silence: tell the board which chunks of the reply to ``seq`` (default: the oldest
        request in flight) arrived, maybe none, and ask for the rest."""
        p = self._oldest() if seq is None else self._pending.get(seq)
        if p is None:
            raise RuntimeError("no request is pending")
        have = np.array([c is not None for c in p.rx], dtype=bool)
        p.asked_max = int(np.flatnonzero(~have).max()) if have.size and not have.all() else len(p.rx) - 1
        self.polls += 1
        return DELIMITER + encode_frame(Frame(self.version, FLAG_CONTROL, p.seq, p.opcode, 0, 0, 1,
                                              encode_control(POLL, have), self.session_id))

    def poll_all(self) -> bytes:
        """A poll for every request in flight (a window whose replies were all lost is recovered in one round)."""
        return b"".join(self.poll(seq) for seq in list(self._pending))

    def abandon(self) -> list[int]:
        """Give up every request in flight (a request failed); returns their sequence numbers.  The next
        request carries no ordering flag, so the board does not wait for any of them."""
        seqs = list(self._pending)
        self._pending.clear()
        self._outbox.clear()
        return seqs

    def take_outbox(self) -> bytes:
        """Bytes the session wants sent now (chunks the board asked for, a poll on a gap)."""
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    def take_reply(self, seq: int) -> Message | None:
        """The complete reply to ``seq``, if it has arrived (once)."""
        return self._ready.pop(seq, None)

    def receive_data(self, data: bytes) -> Message | None:
        """Feed received bytes; returns the oldest complete reply not yet taken, if any."""
        self.feed(data)
        if not self._ready:
            return None
        return self._ready.pop(next(iter(self._ready)))

    def feed(self, data: bytes) -> int:
        """Feed received bytes; returns how many replies they completed (see :meth:`take_reply`)."""
        done = 0
        for f in self._decoder.feed(data):
            p = self._pending.get(f.seq) if f.is_response else None
            if p is None or f.opcode != p.opcode:
                self.foreign_frames += 1
                continue
            if f.session is None:
                # a board without sessions refusing our version: the one reply it can give us
                if f.status == Status.VERSION_MISMATCH and f.chunk_count == 1:
                    del self._pending[f.seq]
                    self._ready[f.seq] = Message(f.seq, f.opcode, f.status, f.payload)
                    done += 1
                    continue
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
                del self._pending[f.seq]
                self._ready[f.seq] = msg
                done += 1
        return done

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
            self._outbox += self.poll(p.seq)  # the last chunk it expected came, with gaps before it: ask now
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
class _Executed:
    opcode: int
    reply: list[bytes] = field(default_factory=list)


@dataclass
class _Session:
    sid: int
    version: int
    chunk_bytes: int
    window: int = 1
    last_seq: int = 0
    """Every request of this session up to here (serial-number order) is executed or abandoned."""
    executed: OrderedDict[int, _Executed] = field(default_factory=OrderedDict)
    """The last ``window`` executed requests and their reply chunks: a poll for any request still in
    flight at the host finds its reply here."""


@dataclass
class _Inbound:
    session: int
    seq: int
    opcode: int
    version: int
    count: int
    last_s: float
    after_previous: bool = False
    chunks: dict[int, bytes] = field(default_factory=dict)
    nbytes: int = 0
    asked_max: int = -1
    refusal: bytes | None = None
    """A request refused before it was complete (too large): answered with this when its turn comes."""

    @property
    def complete(self) -> bool:
        return self.refusal is not None or len(self.chunks) == self.count

    def bitmap(self) -> np.ndarray:
        have = np.zeros(self.count, dtype=bool)
        if self.refusal is not None:
            have[:] = True
        else:
            have[list(self.chunks)] = True
        return have


def _error(f: Frame, status: int, text: str, version: int | None = None) -> bytes:
    """A one-chunk error reply to the request ``f`` belongs to (not cached)."""
    return encode_message(seq=f.seq, opcode=f.opcode, status=status, flags=FLAG_RESPONSE,
                          version=version or f.version, session=f.session,
                          payload=encode_json({"error": text}))


def _offset(seq: int, base: int) -> int:
    return (seq - base) & 0xFFFFFFFF


class SessionServer:
    """The board end of sessions (version 3 on): request collection under a memory cap, selective
    resending, and in-order execution of a window of pipelined requests (version 5)."""

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES, idle_s: float = REASSEMBLY_IDLE_S,
                 clock=time.monotonic):
        self.max_message_bytes = max_message_bytes
        self.idle_s = idle_s
        self._clock = clock
        self._sessions: OrderedDict[int, _Session] = OrderedDict()
        self._inbound: dict[tuple[int, int], _Inbound] = {}
        self.chunks_resent = 0
        self.stale_requests = 0
        self.duplicate_chunks = 0
        self.refused = 0
        self.dropped_chunks = 0
        """Chunks not kept because the window or the memory cap was full (the host resends them)."""
        self.max_held = 0
        """Most requests held at once while collecting or waiting for their turn (a figure for tests)."""

    @property
    def reassembly_bytes(self) -> int:
        """Bytes of requests held (collecting or waiting their turn): at most ``max_message_bytes``."""
        return sum(inb.nbytes for inb in self._inbound.values())

    @property
    def sessions(self) -> list[int]:
        return list(self._sessions)

    def window(self, session: int) -> int:
        st = self._sessions.get(session)
        return st.window if st else 0

    def drop_incomplete(self) -> None:
        """Forget every request not executed yet (its host disconnected)."""
        self._inbound.clear()

    def receive_frames(self, frames: list[Frame]) -> tuple[list[Request], bytes]:
        """Frames with a session field -> (new requests to execute, in order; bytes to send now)."""
        requests: list[Request] = []
        out = bytearray()
        now = self._clock()
        for key in [k for k, inb in self._inbound.items() if now - inb.last_s > self.idle_s]:
            del self._inbound[key]
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
                continue
            out += self._on_chunk(f, now)
            st = self._sessions.get(f.session)  # type: ignore[arg-type]
            if st is not None:
                new, refusals = self._run(st)
                requests += new
                out += refusals
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
        if not _newer(f.seq, st.last_seq):
            done = st.executed.get(f.seq)
            if done is None:
                self.stale_requests += 1
                return b""
            if done.opcode != f.opcode:
                return _error(f, Status.BAD_REQUEST, f"sequence number {f.seq} of this session was used for "
                                                     f"another opcode (0x{done.opcode:02x})")
            if have.size != len(done.reply):
                have = np.zeros(len(done.reply), dtype=bool)
            missing = np.flatnonzero(~have)
            self.chunks_resent += int(missing.size)
            return DELIMITER + b"".join(done.reply[i] for i in missing) if missing.size else b""
        inb = self._inbound.get((st.sid, f.seq))
        if inb is not None and inb.opcode == f.opcode:
            have = inb.bitmap()
            inb.asked_max = int(np.flatnonzero(~have).max()) if not have.all() else inb.count - 1
            return self._have(f, have)
        return self._have(f, np.zeros(0, dtype=bool))  # nothing of it arrived (or it was dropped)

    def _have(self, f: Frame, have: np.ndarray) -> bytes:
        return DELIMITER + encode_frame(Frame(f.version, FLAG_RESPONSE | FLAG_CONTROL, f.seq, f.opcode, 0, 0, 1,
                                              encode_control(HAVE, have), f.session))

    def _on_chunk(self, f: Frame, now: float) -> bytes:
        sid: int = f.session  # type: ignore[assignment]
        st = self._sessions.get(sid)
        if st is not None and not _newer(f.seq, st.last_seq):
            done = st.executed.get(f.seq)
            if done is None:
                self.stale_requests += 1
                return b""
            if f.opcode != done.opcode:
                return _error(f, Status.BAD_REQUEST, f"sequence number {f.seq} of this session was used "
                                                     f"for another opcode (0x{done.opcode:02x})")
            self.duplicate_chunks += 1  # executed already: the host polls for the reply
            return b""
        if st is None and f.opcode != Op.HELLO:
            if f.chunk_index == 0:
                return _error(f, Status.BAD_REQUEST, "unknown session: open one with HELLO first (the board "
                                                     "was restarted or has forgotten it; reconnect)")
            return b""
        for key in [k for k in self._inbound if k[0] != sid]:
            del self._inbound[key]  # one host at a time: another session's requests are given up
        key = (sid, f.seq)
        inb = self._inbound.get(key)
        if inb is None or (inb.opcode, inb.count) != (f.opcode, f.chunk_count):
            inb = _Inbound(sid, f.seq, f.opcode, f.version, f.chunk_count, now,
                           after_previous=st is not None and bool(f.flags & FLAG_AFTER_PREVIOUS),
                           asked_max=f.chunk_count - 1)
            self._inbound[key] = inb
            if not self._make_room(st, inb, 0):
                return b""
        inb.last_s = now
        if inb.refusal is not None:
            return b""
        if f.chunk_index in inb.chunks:
            self.duplicate_chunks += 1
        else:
            size = len(f.payload)
            if inb.nbytes + size > self.max_message_bytes or (
                    f.chunk_index < f.chunk_count - 1 and f.chunk_count * size > self.max_message_bytes):
                return self._refuse_oversize(f, st, inb)
            if not self._make_room(st, inb, size):
                return b""
            inb.chunks[f.chunk_index] = f.payload
            inb.nbytes += size
        if inb.complete:
            if st is None:  # a HELLO opening a session: it runs at once
                st = self._open(sid, f.version, b"".join(inb.chunks[i] for i in range(inb.count)))
                st.last_seq = (f.seq - 1) & 0xFFFFFFFF
            return b""
        if f.chunk_index >= inb.asked_max:  # the last chunk it expected came, with gaps before it
            have = inb.bitmap()
            inb.asked_max = int(np.flatnonzero(~have).max())
            return self._have(f, have)
        return b""

    def _make_room(self, st: _Session | None, inb: _Inbound, size: int) -> bool:
        """Keep at most the session's window of requests and ``max_message_bytes`` held: give up the
        requests furthest from their turn first.  False if ``inb`` itself had to go (its chunk is dropped)."""
        window = st.window if st else 1
        base = st.last_seq if st else (inb.seq - 1) & 0xFFFFFFFF
        mine = sorted((k for k in self._inbound if k[0] == inb.session), key=lambda k: _offset(k[1], base))
        held = self.reassembly_bytes + size
        while mine and (len(mine) > window or held > self.max_message_bytes):
            victim = self._inbound.pop(mine.pop())
            held -= victim.nbytes
            if victim is inb:
                self.dropped_chunks += 1
                return False
        self.max_held = max(self.max_held, len(mine))
        return True

    def _run(self, st: _Session) -> tuple[list[Request], bytes]:
        """Execute, in sequence order, every complete request of ``st`` whose turn it is.  A request without
        the after-previous flag may run at once: the host had nothing older in flight, so whatever older
        request the board still holds was given up by its host."""
        requests: list[Request] = []
        out = bytearray()
        while True:
            ready = sorted((inb for (sid, _), inb in self._inbound.items() if sid == st.sid and inb.complete),
                           key=lambda i: _offset(i.seq, st.last_seq))
            nxt = next((i for i in ready if not i.after_previous or i.seq == (st.last_seq + 1) & 0xFFFFFFFF), None)
            if nxt is None:
                return requests, bytes(out)
            for key in [k for k in self._inbound if k[0] == st.sid and not _newer(k[1], nxt.seq)]:
                del self._inbound[key]  # nxt itself, and anything older (given up by its host)
            st.last_seq = nxt.seq
            done = _Executed(nxt.opcode)
            st.executed[nxt.seq] = done
            while len(st.executed) > st.window:
                st.executed.popitem(last=False)
            for other in self._sessions.values():
                if other is not st:
                    other.executed.clear()  # one host at a time: only the active session's replies are worth keeping
            if nxt.refusal is not None:
                done.reply = [nxt.refusal[1:]]
                out += nxt.refusal
            else:
                payload = b"".join(nxt.chunks[i] for i in range(nxt.count))
                requests.append(Request(nxt.seq, nxt.opcode, payload, nxt.version, st.sid))

    def _refuse_oversize(self, f: Frame, st: _Session | None, inb: _Inbound) -> bytes:
        self.refused += 1
        reply = _error(f, Status.BAD_REQUEST, f"request larger than the board's limit of {self.max_message_bytes} "
                                              "bytes: split it")
        if st is None:
            del self._inbound[(inb.session, inb.seq)]
            return reply
        inb.chunks, inb.nbytes, inb.refusal = {}, 0, reply  # answered (and cached) when its turn comes
        return b""

    def _open(self, sid: int, version: int, hello: bytes) -> _Session:
        chunk, window = hello_params(hello, version)
        st = _Session(sid, version, chunk, window)
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
        done = st.executed.get(request.seq)
        if done is not None:
            done.reply = frames
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
    """A version-1/2 host end: stop-and-wait, a retried request resent whole under the same seq; a new
    request supersedes the one in flight."""

    window = 1
    asked_window = 1

    def __init__(self, first_seq: int = 1, max_payload: int = MAX_PAYLOAD, version: int = 2):
        self.version = version
        self._seq = (first_seq - 1) & 0xFFFFFFFF
        self._max_payload = max_payload
        self._decoder = FrameDecoder()
        self._rx = _Reassembly()
        self._pending: tuple[int, int, bytes] | None = None
        self._ready: dict[int, Message] = {}
        self.foreign_frames = 0
        self.polls = 0
        self.progress = 0

    @property
    def decoder(self) -> FrameDecoder:
        return self._decoder

    @property
    def in_flight(self) -> int:
        return int(self._pending is not None)

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def window_full(self) -> bool:
        return self._pending is not None

    @property
    def pending_seq(self) -> int | None:
        return self._pending[0] if self._pending else None

    @property
    def pending_chunks(self) -> int:
        return max(1, -(-len(self._pending[2]) // self._max_payload)) if self._pending else 0

    @property
    def reply_started(self) -> bool:
        return bool(self._pending and self._rx.chunks and self._rx.seq == self._pending[0])

    def reply_started_for(self, seq: int) -> bool:
        return self.reply_started and self.pending_seq == seq

    def hello_payload(self) -> bytes:
        return encode_hello(self.version)

    def grant(self, board_max: int) -> int:
        return 1

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
    poll_all = poll

    def abandon(self) -> list[int]:
        seqs = [self._pending[0]] if self._pending else []
        self._pending = None
        return seqs

    def take_outbox(self) -> bytes:
        return b""

    def take_reply(self, seq: int) -> Message | None:
        return self._ready.pop(seq, None)

    def feed(self, data: bytes) -> int:
        msg = self._receive(data)
        if msg is None:
            return 0
        self._ready[msg.seq] = msg
        return 1

    def receive_data(self, data: bytes) -> Message | None:
        return self._receive(data)

    def _receive(self, data: bytes) -> Message | None:
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
