"""The typed messages, their registry, the board's state table and the protocol's exceptions."""

from __future__ import annotations

import numpy as np
import pytest

from protocols import messages as m
from protocols.messages import Op
from protocols.session import ClientSession, NothingPending, WindowFull
from protocols.session_states import (
    TRANSITIONS,
    Action,
    Event,
    RequestState,
    request_state,
)


def test_every_opcode_has_a_request_and_a_reply_class():
    assert set(m.REQUESTS) == set(Op) and set(m.REPLIES) == set(Op)
    for op, cls in m.REQUESTS.items():
        assert cls.OP == op or op == Op.RESTORE and cls is m.SnapshotImage


@pytest.mark.parametrize("layout", [m.Layout(5, 8, 10), m.Layout(3)], ids=["packed", "byte-wide"])
def test_requests_and_replies_decode_to_what_was_encoded(layout):
    flat = np.array([2, 7, 30])
    requests = [
        m.SetProfilesRequest(1.2, 5e-8, -1.1, 6e-8), m.PulseRequest(flat, np.array([1, -2, 3]), 9, np.array([0, 4, 0])),
        m.ReadRegionRequest(1, 2, 3, 4), m.ReadCellsRequest(flat),
        m.VmmRequest(0, 1, 3, 4, True, np.array([[1, -2, 3, 0]]), 1e-4),
        m.ProgramRequest(flat, np.array([5, 6, 7], np.uint16), 1e-6, 9, 3), m.FormRequest(flat, 2.5, 1e-6, 1e-4),
        m.IvSweepRequest(flat, np.linspace(-1, 1, 4), 1e-6, 1e-4), m.WaitRequest(0.25), m.StatusRequest(True),
    ]
    for r in requests:
        back = type(r).decode(r.encode(layout), layout)
        assert back.encode(layout) == r.encode(layout)
    vmm = requests[4]
    reply = m.VmmReply(np.array([[3, -4, 5]]))
    assert np.array_equal(m.decode_reply(vmm, reply.encode(layout), layout).codes, reply.codes)


def test_a_payload_error_names_the_message_and_keeps_the_board_s_text():
    with pytest.raises(m.PayloadError) as info:
        m.SetProfilesRequest.decode(b"\x00" * 7)
    assert (info.value.what, str(info.value)) == (
        "SET_PROFILES", "SET_PROFILES: payload of 7 bytes is shorter than the 32 required")
    with pytest.raises(m.PayloadError, match="^READ_REGION: payload must be 16 bytes$"):
        m.ReadRegionRequest.decode(bytes(17))


def test_session_exceptions_carry_their_fields():
    client = ClientSession(session_id=1)
    client.request(Op.CLOCK, b"")
    with pytest.raises(WindowFull) as info:
        client.request(Op.CLOCK, b"")
    assert (info.value.window, info.value.pending_seq) == (1, 1)
    assert str(info.value) == "the window of 1 requests is full: wait for the reply to sequence number 1 before " \
                              "sending another"
    with pytest.raises(NothingPending, match="no request is pending"):
        client.poll(7)


def test_every_state_the_board_can_reach_has_a_transition():
    """request_state over its whole input space gives only (state, event) pairs the table defines."""
    seen = set()
    for has_session in (False, True):
        for is_hello in (False, True):
            for event in Event:
                for seq, last in ((5, 4), (4, 4), (3, 4), (5, None)):
                    for executed in (None, 0x60, 0x61):
                        for held in (False, True):
                            state = request_state(has_session=has_session, is_hello=is_hello, event=event, seq=seq,
                                                  last_seq=last, executed_opcode=executed, opcode=0x60, held=held)
                            if event is Event.MESSAGE and state in (RequestState.NO_SESSION, RequestState.OPENING,
                                                                    RequestState.HELD, RequestState.REUSED):
                                continue  # versions 1 and 2 have no sessions, hold nothing and map REUSED to STALE
                            seen.add((state, event))
                            assert (state, event) in TRANSITIONS
    assert seen == set(TRANSITIONS)
    assert TRANSITIONS[RequestState.EXECUTED, Event.POLL].action is Action.REPLAY
