"""The board's state table of a request: (state of the request, event) -> (action, next state).

Every frame a board receives concerns one request, named by (session, sequence number, opcode).
:func:`request_state` says where that request stands; :data:`TRANSITIONS` says what the board does
about the event and where the request goes next.  :class:`~protocols.server_session.SessionServer`
(versions 3 to 5: chunks and polls) and :class:`~protocols.legacy_session.LegacyServerSession`
(versions 1 and 2: whole messages) both act through this one table, instead of each checking flags of
their own.  Frames that concern no request of a session (responses, unsupported versions) are filtered
before it.

=============  ================  ==========================  ==========
state          event             action                      next state
=============  ================  ==========================  ==========
NO_SESSION     CHUNK             REFUSE_CHUNK_NO_SESSION     NO_SESSION
NO_SESSION     POLL / OTHER      REFUSE_POLL_NO_SESSION      NO_SESSION
OPENING        CHUNK             COLLECT                     HELD
NEW, HELD      CHUNK             COLLECT                     HELD
NEW, HELD      POLL              SEND_HAVE                   (same)
EXECUTED       CHUNK             COUNT_DUPLICATE             EXECUTED
EXECUTED       POLL              REPLAY                      EXECUTED
REUSED         CHUNK / POLL      REFUSE_REUSED               REUSED
STALE          CHUNK / POLL      COUNT_STALE                 STALE
(session)      OTHER             IGNORE                      (same)
NEW            MESSAGE           EXECUTE                     EXECUTED
EXECUTED       MESSAGE           REPLAY                      EXECUTED
STALE          MESSAGE           COUNT_STALE                 STALE
=============  ================  ==========================  ==========

COLLECT keeps the chunk (within the window and the memory cap) and, once the request is complete,
leaves it for in-order execution: HELD becomes EXECUTED when its turn comes (see
:meth:`~protocols.server_session.SessionServer.receive_frames`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class RequestState(Enum):
    NO_SESSION = "the request's session is unknown to the board"
    OPENING = "a HELLO under a session id the board does not know yet"
    NEW = "newer than the last executed request; nothing of it held"
    HELD = "newer than the last executed request; chunks of it held (collecting, or waiting its turn)"
    EXECUTED = "executed; its reply is cached"
    REUSED = "its sequence number was executed under another opcode"
    STALE = "older than the last executed request and no longer cached"


class Event(Enum):
    CHUNK = "a chunk of the request (version 3 on)"
    POLL = "the host's bitmap of the reply (version 3 on)"
    OTHER = "a control frame that is not a valid POLL"
    MESSAGE = "a whole request (versions 1 and 2)"


class Action(Enum):
    REFUSE_CHUNK_NO_SESSION = "answer the first chunk BAD_REQUEST: open a session with HELLO first"
    REFUSE_POLL_NO_SESSION = "answer BAD_REQUEST: the board has forgotten the session"
    COLLECT = "keep the chunk; ask with HAVE when the last expected chunk came with gaps"
    SEND_HAVE = "send the bitmap of the request chunks held"
    COUNT_DUPLICATE = "count a duplicate chunk; the host polls for the reply"
    REPLAY = "resend the cached reply (the chunks the host lacks)"
    REFUSE_REUSED = "answer BAD_REQUEST: the sequence number was used for another opcode"
    COUNT_STALE = "count a stale request and drop it"
    IGNORE = "drop the frame"
    EXECUTE = "hand the request to the firmware"


@dataclass(frozen=True)
class Transition:
    action: Action
    next_state: RequestState | None
    """None: the state does not change."""


S, E, A = RequestState, Event, Action
TRANSITIONS: dict[tuple[RequestState, Event], Transition] = {
    (S.NO_SESSION, E.CHUNK): Transition(A.REFUSE_CHUNK_NO_SESSION, None),
    (S.NO_SESSION, E.POLL): Transition(A.REFUSE_POLL_NO_SESSION, None),
    (S.NO_SESSION, E.OTHER): Transition(A.REFUSE_POLL_NO_SESSION, None),
    (S.OPENING, E.CHUNK): Transition(A.COLLECT, S.HELD),
    (S.NEW, E.CHUNK): Transition(A.COLLECT, S.HELD),
    (S.HELD, E.CHUNK): Transition(A.COLLECT, S.HELD),
    (S.NEW, E.POLL): Transition(A.SEND_HAVE, None),
    (S.HELD, E.POLL): Transition(A.SEND_HAVE, None),
    (S.EXECUTED, E.CHUNK): Transition(A.COUNT_DUPLICATE, None),
    (S.EXECUTED, E.POLL): Transition(A.REPLAY, None),
    (S.REUSED, E.CHUNK): Transition(A.REFUSE_REUSED, None),
    (S.REUSED, E.POLL): Transition(A.REFUSE_REUSED, None),
    (S.STALE, E.CHUNK): Transition(A.COUNT_STALE, None),
    (S.STALE, E.POLL): Transition(A.COUNT_STALE, None),
    (S.NEW, E.OTHER): Transition(A.IGNORE, None),
    (S.HELD, E.OTHER): Transition(A.IGNORE, None),
    (S.EXECUTED, E.OTHER): Transition(A.IGNORE, None),
    (S.REUSED, E.OTHER): Transition(A.IGNORE, None),
    (S.STALE, E.OTHER): Transition(A.IGNORE, None),
    (S.NEW, E.MESSAGE): Transition(A.EXECUTE, S.EXECUTED),
    (S.EXECUTED, E.MESSAGE): Transition(A.REPLAY, None),
    (S.STALE, E.MESSAGE): Transition(A.COUNT_STALE, None),
}
del S, E, A


def newer(a: int, b: int) -> bool:
    """True when sequence number ``a`` comes after ``b`` (serial-number arithmetic, 32 bit)."""
    return 0 < ((a - b) & 0xFFFFFFFF) < 0x80000000


def request_state(*, has_session: bool, is_hello: bool, event: Event, seq: int, last_seq: int | None,
                  executed_opcode: int | None, opcode: int, held: bool) -> RequestState:
    """Where a request stands at the board.

    ``last_seq``: the session's last executed (or abandoned) sequence number, None before any;
    ``executed_opcode``: the opcode ``seq`` was executed under while its reply is cached, else None;
    ``held``: chunks of this (seq, opcode) are held.
    """
    if not has_session:
        return RequestState.OPENING if is_hello and event is Event.CHUNK else RequestState.NO_SESSION
    if last_seq is not None and not newer(seq, last_seq):
        if executed_opcode is None:
            return RequestState.STALE
        return RequestState.EXECUTED if executed_opcode == opcode else RequestState.REUSED
    return RequestState.HELD if held else RequestState.NEW


def transition(state: RequestState, event: Event) -> Transition:
    return TRANSITIONS[state, event]
