"""Request/response sessions over the frame layer: sequence numbers, chunking, exactly-once.

Sans-I/O: both classes take the bytes that arrived and return the bytes to send;
the caller owns the port, the socket and the clock.

The client is stop-and-wait: one request in flight.  A request is retried under
the *same* sequence number.  The server executes a sequence number at most once:
when a retried request arrives for the sequence number it executed last, it sends
the cached reply again instead of executing it a second time, so a request whose
reply was lost or corrupted is never applied twice.  Requests older than the last
executed one are stale copies and are dropped.  HELLO starts a new conversation:
it is always executed (it changes nothing) and re-bases the sequence tracking, so a
restarted host is never mistaken for a stale one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
from protocols.messages import Op, Status, encode_json


@dataclass(frozen=True)
class Message:
    seq: int
    opcode: int
    status: int
    payload: bytes


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


def _newer(a: int, b: int) -> bool:
    """True when sequence number ``a`` comes after ``b`` (serial-number arithmetic, 32 bit)."""
    return 0 < ((a - b) & 0xFFFFFFFF) < 0x80000000


class ClientSession:
    """The host end: numbers requests, reassembles the reply to the pending one."""

    def __init__(self, first_seq: int = 1, max_payload: int = MAX_PAYLOAD, version: int = PROTOCOL_VERSION):
        self.version = version
        """Protocol version of the requests this session sends."""
        self._seq = (first_seq - 1) & 0xFFFFFFFF
        self._max_payload = max_payload
        self._decoder = FrameDecoder()
        self._rx = _Reassembly()
        self._pending: tuple[int, int, bytes] | None = None
        self.stale_frames = 0
        self.progress = 0
        """Frames of the pending reply received so far (a sign of life while a long reply streams)."""

    @property
    def decoder(self) -> FrameDecoder:
        return self._decoder

    @property
    def pending_seq(self) -> int | None:
        return self._pending[0] if self._pending else None

    def request(self, opcode: int, payload: bytes) -> bytes:
        """Start a new request; returns its wire bytes."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        self._pending = (self._seq, opcode, payload)
        self._rx = _Reassembly()
        self.progress = 0
        return encode_message(seq=self._seq, opcode=opcode, payload=payload, max_payload=self._max_payload,
                              version=self.version)

    def retransmit(self) -> bytes:
        """The pending request again, same sequence number, marked as a retransmission."""
        if self._pending is None:
            raise RuntimeError("no request is pending")
        seq, opcode, payload = self._pending
        return encode_message(seq=seq, opcode=opcode, payload=payload, flags=FLAG_RETRANSMIT,
                              max_payload=self._max_payload, version=self.version)

    def receive_data(self, data: bytes) -> Message | None:
        """Feed received bytes; returns the complete reply to the pending request, if it is here."""
        result = None
        for f in self._decoder.feed(data):
            if not f.is_response or self._pending is None or f.seq != self._pending[0]:
                self.stale_frames += 1
                continue
            self.progress += 1
            msg = self._rx.add(f)
            if msg is not None and result is None:
                result = msg
                self._pending = None
        return result


@dataclass(frozen=True)
class Request:
    """A new request the server must execute, then answer with :meth:`ServerSession.respond`."""

    seq: int
    opcode: int
    payload: bytes
    version: int = PROTOCOL_VERSION


class ServerSession:
    """The board end: reassembles requests, drops stale copies, replays cached replies."""

    def __init__(self, max_payload: int = MAX_PAYLOAD):
        self._max_payload = max_payload
        self._decoder = FrameDecoder()
        self._rx = _Reassembly()
        self._last_seq: int | None = None
        self._last_reply = b""
        self.replays = 0
        self.stale_requests = 0

    @property
    def decoder(self) -> FrameDecoder:
        return self._decoder

    def receive_data(self, data: bytes) -> tuple[list[Request], bytes]:
        """Feed received bytes.

        Returns the new requests to execute (in order) and the bytes to send now for
        retried requests whose reply is cached.
        """
        requests: list[Request] = []
        replay = bytearray()
        for f in self._decoder.feed(data):
            if f.is_response:
                continue
            msg = self._rx.add(f)
            if msg is None:
                continue
            if f.version not in SUPPORTED_VERSIONS:
                replay += encode_message(
                    seq=msg.seq, opcode=msg.opcode, status=Status.VERSION_MISMATCH, flags=FLAG_RESPONSE,
                    version=f.version if 0 < f.version < 256 else PROTOCOL_VERSION,
                    payload=encode_json({"error": f"protocol version {f.version} is not supported; "
                                                  "this firmware speaks versions "
                                                  f"{', '.join(map(str, SUPPORTED_VERSIONS))}"}),
                )
                continue
            if self._last_seq is not None and msg.seq == self._last_seq:
                self.replays += 1
                replay += self._last_reply
                continue
            if msg.opcode != Op.HELLO and self._last_seq is not None and not _newer(msg.seq, self._last_seq):
                self.stale_requests += 1
                continue
            # a new request: anything still pending from before is superseded
            self._last_seq = msg.seq
            self._last_reply = b""
            requests.append(Request(msg.seq, msg.opcode, msg.payload, f.version))
        return requests, bytes(replay)

    def respond(self, request: Request, status: int, payload: bytes) -> bytes:
        """Wire bytes of the reply to ``request``; cached for replay if the request is retried."""
        wire = encode_message(seq=request.seq, opcode=request.opcode, status=status, payload=payload,
                              flags=FLAG_RESPONSE, max_payload=self._max_payload, version=request.version)
        if request.seq == self._last_seq:
            self._last_reply = wire
        return wire
