"""The board end of sessions (protocol version 3 on): request collection under a memory cap, selective
resending, and in-order execution of a window of pipelined requests (version 5).

What the board does with each frame is decided by the state table of :mod:`protocols.session_states`;
this module holds the state (sessions, requests held, replies cached) and performs the actions.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from protocols.control import (
    HAVE,
    MAX_MESSAGE_BYTES,
    MAX_SESSIONS,
    POLL,
    REASSEMBLY_IDLE_SEC,
    ControlPayload,
    hello_params,
    offset,
)
from protocols.framing import (
    DELIMITER,
    FLAG_AFTER_PREVIOUS,
    FLAG_CONTROL,
    FLAG_RESPONSE,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Frame,
    FrameDecoder,
    chunk_frames,
    encode_frame,
    encode_message,
)
from protocols.opcodes import Op, PayloadError, Status
from protocols.replies import ErrorReply
from protocols.session_states import (
    Action,
    Event,
    RequestState,
    newer,
    request_state,
    transition,
)


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
    last_sec: float
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
                          payload=ErrorReply(text).encode())


class SessionServer:
    """The board end of sessions (version 3 on): request collection under a memory cap, selective
    resending, and in-order execution of a window of pipelined requests (version 5)."""

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES, idle_sec: float = REASSEMBLY_IDLE_SEC,
                 clock=time.monotonic):
        self.max_message_bytes = max_message_bytes
        self.idle_sec = idle_sec
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
        for key in [k for k, inb in self._inbound.items() if now - inb.last_sec > self.idle_sec]:
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
            out += self._on_frame(f, now)
            st = self._sessions.get(f.session)  # type: ignore[arg-type]
            if st is not None and not f.is_control:
                new, refusals = self._run(st)
                requests += new
                out += refusals
        return requests, bytes(out)

    def _on_frame(self, f: Frame, now: float) -> bytes:
        """Act on one frame as the state table says (:mod:`protocols.session_states`)."""
        have = None
        if not f.is_control:
            event = Event.CHUNK
        else:
            try:
                control = ControlPayload.decode(f.payload)
                event, have = (Event.POLL, control.have) if control.kind == POLL else (Event.OTHER, None)
            except PayloadError:
                event = Event.OTHER
        st = self._sessions.get(f.session)  # type: ignore[arg-type]
        done = st.executed.get(f.seq) if st is not None else None
        inb = self._inbound.get((f.session, f.seq))  # type: ignore[arg-type]
        state = request_state(has_session=st is not None, is_hello=f.opcode == Op.HELLO, event=event, seq=f.seq,
                              last_seq=st.last_seq if st else None, executed_opcode=done.opcode if done else None,
                              opcode=f.opcode, held=inb is not None and inb.opcode == f.opcode)
        action = transition(state, event).action
        if action is Action.COLLECT:
            return self._collect(f, st, now)
        if action is Action.SEND_HAVE:
            return self._send_have(f, inb if state is RequestState.HELD else None)
        if action is Action.REPLAY:
            return self._replay(done, have)  # type: ignore[arg-type]
        if action is Action.COUNT_DUPLICATE:
            self.duplicate_chunks += 1
        elif action is Action.COUNT_STALE:
            self.stale_requests += 1
        elif action is Action.REFUSE_REUSED:
            return _error(f, Status.BAD_REQUEST, f"sequence number {f.seq} of this session was used for another "
                                                 f"opcode (0x{done.opcode:02x})")  # type: ignore[union-attr]
        elif action is Action.REFUSE_POLL_NO_SESSION:
            return _error(f, Status.BAD_REQUEST, "unknown session: the board was restarted or has forgotten it; "
                                                 "reconnect (a new HELLO opens a new session)")
        elif action is Action.REFUSE_CHUNK_NO_SESSION and f.chunk_index == 0:
            return _error(f, Status.BAD_REQUEST, "unknown session: open one with HELLO first (the board "
                                                 "was restarted or has forgotten it; reconnect)")
        return b""

    def _replay(self, done: _Executed, have: np.ndarray) -> bytes:
        """The chunks of an executed request's cached reply that the host's bitmap lacks."""
        if have.size != len(done.reply):
            have = np.zeros(len(done.reply), dtype=bool)
        missing = np.flatnonzero(~have)
        self.chunks_resent += int(missing.size)
        return DELIMITER + b"".join(done.reply[i] for i in missing) if missing.size else b""

    def _send_have(self, f: Frame, inb: _Inbound | None) -> bytes:
        if inb is None:
            return self._have(f, np.zeros(0, dtype=bool))  # nothing of it arrived (or it was dropped)
        have = inb.bitmap()
        inb.asked_max = int(np.flatnonzero(~have).max()) if not have.all() else inb.count - 1
        return self._have(f, have)

    def _have(self, f: Frame, have: np.ndarray) -> bytes:
        return DELIMITER + encode_frame(Frame(f.version, FLAG_RESPONSE | FLAG_CONTROL, f.seq, f.opcode, 0, 0, 1,
                                              ControlPayload(HAVE, have).encode(), f.session))

    def _collect(self, f: Frame, st: _Session | None, now: float) -> bytes:
        """Keep a request chunk (a new session's HELLO opens the session once complete); ask with HAVE when
        the last chunk expected came with gaps before it."""
        sid: int = f.session  # type: ignore[assignment]
        for key in [k for k in self._inbound if k[0] != sid]:
            del self._inbound[key]  # one host at a time: another session's requests are given up
        inb = self._inbound.get((sid, f.seq))
        if inb is None or (inb.opcode, inb.count) != (f.opcode, f.chunk_count):
            inb = _Inbound(sid, f.seq, f.opcode, f.version, f.chunk_count, now,
                           after_previous=st is not None and bool(f.flags & FLAG_AFTER_PREVIOUS),
                           asked_max=f.chunk_count - 1)
            self._inbound[(sid, f.seq)] = inb
            if not self._make_room(st, inb, 0):
                return b""
        inb.last_sec = now
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
        mine = sorted((k for k in self._inbound if k[0] == inb.session), key=lambda k: offset(k[1], base))
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
                           key=lambda i: offset(i.seq, st.last_seq))
            nxt = next((i for i in ready if not i.after_previous or i.seq == (st.last_seq + 1) & 0xFFFFFFFF), None)
            if nxt is None:
                return requests, bytes(out)
            for key in [k for k in self._inbound if k[0] == st.sid and not newer(k[1], nxt.seq)]:
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
