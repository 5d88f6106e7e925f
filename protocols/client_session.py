"""The host end of a session (protocol version 3 on): a window of requests in flight, chunks acknowledged
and resent individually.  Sans-I/O: bytes in, bytes out; the caller owns the port and the clock."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from protocols.control import (
    CHUNK_BYTES,
    HAVE,
    MAX_IN_FLIGHT,
    MIN_CHUNK_BYTES,
    POLL,
    ControlPayload,
    LinkHealth,
    Message,
    NothingPending,
    WindowFull,
    new_session_id,
)
from protocols.framing import (
    DELIMITER,
    FLAG_AFTER_PREVIOUS,
    FLAG_CONTROL,
    MAX_PAYLOAD,
    PIPELINE_VERSION,
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    chunk_frames,
    encode_frame,
)
from protocols.opcodes import PayloadError, Status
from protocols.requests import HelloRequest


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
        return HelloRequest(self.version, self.chunk_bytes, self.asked_window).encode()

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
            raise WindowFull(self.window, self.pending_seq)
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
            raise NothingPending(seq)
        have = np.array([c is not None for c in p.rx], dtype=bool)
        p.asked_max = int(np.flatnonzero(~have).max()) if have.size and not have.all() else len(p.rx) - 1
        self.polls += 1
        return DELIMITER + encode_frame(Frame(self.version, FLAG_CONTROL, p.seq, p.opcode, 0, 0, 1,
                                              ControlPayload(POLL, have).encode(), self.session_id))

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
            control = ControlPayload.decode(f.payload)
        except PayloadError:
            self._decoder.malformed += 1
            return
        if control.kind != HAVE:
            return
        have = control.have
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
