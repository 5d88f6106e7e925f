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
  are dropped on disconnect, after :data:`REASSEMBLY_IDLE_SEC` without a new chunk, or when a
  newer request without the ordering flag executes.

Versions 1 and 2 (:class:`LegacyClientSession`, :class:`LegacyServerSession`) have no
session field and resend whole messages; a board keeps serving them.
"""

from __future__ import annotations

from protocols.client_session import ClientSession
from protocols.control import (
    CHUNK_BYTES,
    DEFAULT_WINDOW,
    HAVE,
    MAX_IN_FLIGHT,
    MAX_MESSAGE_BYTES,
    MAX_SESSIONS,
    MIN_CHUNK_BYTES,
    POLL,
    REASSEMBLY_IDLE_SEC,
    ControlPayload,
    LinkHealth,
    Message,
    NothingPending,
    WindowFull,
    decode_control,
    encode_control,
    encode_hello,
    hello_params,
    new_session_id,
)
from protocols.legacy_session import LegacyClientSession, LegacyServerSession
from protocols.server_session import BusyResponder, Request, SessionServer

__all__ = [
    "CHUNK_BYTES", "DEFAULT_WINDOW", "HAVE", "MAX_IN_FLIGHT", "MAX_MESSAGE_BYTES", "MAX_SESSIONS", "MIN_CHUNK_BYTES",
    "POLL", "REASSEMBLY_IDLE_SEC", "BusyResponder", "ClientSession", "ControlPayload", "LegacyClientSession",
    "LegacyServerSession", "LinkHealth", "Message", "NothingPending", "Request", "SessionServer", "WindowFull",
    "decode_control", "encode_control", "encode_hello", "hello_params", "new_session_id",
]
