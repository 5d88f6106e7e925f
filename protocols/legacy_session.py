"""Protocol versions 1 and 2: no session field, stop-and-wait, whole messages resent under the same
sequence number.  A board keeps serving such hosts; :class:`LegacyServerSession` decides through the
state table of :mod:`protocols.session_states`, as the version-3 server does."""

from __future__ import annotations

from dataclasses import dataclass, field

from protocols.control import (
    MAX_MESSAGE_BYTES,
    LinkHealth,
    Message,
    NothingPending,
    encode_hello,
)
from protocols.framing import (
    FLAG_RESPONSE,
    FLAG_RETRANSMIT,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Frame,
    FrameDecoder,
    encode_message,
)
from protocols.opcodes import Op, Status
from protocols.replies import ErrorReply
from protocols.server_session import Request
from protocols.session_states import (
    Action,
    Event,
    RequestState,
    request_state,
    transition,
)


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
            raise NothingPending()
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
                    payload=ErrorReply(f"protocol version {f.version} is not supported without a session; this "
                                       f"firmware speaks versions {', '.join(map(str, SUPPORTED_VERSIONS))}").encode(),
                )
                continue
            action = self._action(msg)
            if action is Action.REPLAY:
                self.replays += 1
                replay += self._last_reply
            elif action is Action.COUNT_STALE:
                self.stale_requests += 1
            else:  # a new request: anything still pending from before is superseded
                self._last_seq, self._last_opcode = msg.seq, msg.opcode
                self._last_reply = b""
                requests.append(Request(msg.seq, msg.opcode, msg.payload, f.version))
        return requests, bytes(replay)

    def _action(self, msg: Message) -> Action:
        """What the state table says about a whole request.  Versions 1 and 2 cannot refuse a sequence number
        reused for another opcode: it is stale; and a HELLO is never stale (its host restarted)."""
        executed = self._last_opcode if msg.seq == self._last_seq else None
        state = request_state(has_session=True, is_hello=msg.opcode == Op.HELLO, event=Event.MESSAGE, seq=msg.seq,
                              last_seq=self._last_seq, executed_opcode=executed, opcode=msg.opcode, held=False)
        if state is RequestState.REUSED:
            state = RequestState.STALE
        if state is RequestState.STALE and msg.opcode == Op.HELLO:
            state = RequestState.NEW
        return transition(state, Event.MESSAGE).action

    def respond(self, request: Request, status: int, payload: bytes) -> bytes:
        wire = encode_message(seq=request.seq, opcode=request.opcode, status=status, payload=payload,
                              flags=FLAG_RESPONSE, max_payload=self._max_payload, version=request.version)
        if request.seq == self._last_seq:
            self._last_reply = wire
        return wire
