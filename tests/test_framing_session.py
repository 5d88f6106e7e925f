"""The frame layer and the sessions: survive garbage and partial reads; execute each request once."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.framing import MAX_PAYLOAD, FrameDecoder, encode_message
from protocols.messages import Op, Status
from protocols.session import LegacyClientSession as ClientSession
from protocols.session import LegacyServerSession


class ServerSession:
    """The version-1/2 server layer behind its own frame decoder, as the endpoint drives it."""

    def __init__(self):
        self.layer, self.decoder = LegacyServerSession(), FrameDecoder()

    def receive_data(self, data: bytes):
        return self.layer.receive_frames(self.decoder.feed(data))

    def respond(self, request, status, payload):
        return self.layer.respond(request, status, payload)

    @property
    def replays(self):
        return self.layer.replays

payloads = st.binary(min_size=0, max_size=3 * 1024)


@given(payload=payloads, seq=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_message_survives_any_partial_reads(payload, seq, cuts):
    wire = encode_message(seq=seq, opcode=Op.PULSE, payload=payload, max_payload=512)
    dec = FrameDecoder()
    pieces, last = [], 0
    for c in sorted(set(c % (len(wire) + 1) for c in cuts)):
        pieces.append(wire[last:c])
        last = c
    pieces.append(wire[last:])
    frames = [f for p in pieces for f in dec.feed(p)]
    assert b"".join(f.payload for f in sorted(frames, key=lambda f: f.chunk_index)) == payload
    assert {f.seq for f in frames} == {seq}
    assert frames[0].chunk_count == max(1, -(-len(payload) // 512))


@given(garbage=st.binary(max_size=300), payload=payloads)
def test_garbage_before_a_message_is_skipped(garbage, payload):
    dec = FrameDecoder()
    dec.feed(garbage)
    frames = dec.feed(encode_message(seq=7, opcode=Op.READ_CELLS, payload=payload))
    assert b"".join(f.payload for f in frames) == payload


@given(data=st.binary(max_size=2000))
def test_decoder_never_raises_on_noise(data):
    dec = FrameDecoder()
    for f in dec.feed(data):  # a random valid frame is astronomically unlikely, but legal
        assert f.chunk_index < f.chunk_count


@settings(max_examples=50)
@given(payload=st.binary(min_size=1, max_size=2000), pos=st.integers(0, 10**6), xor=st.integers(1, 255))
def test_a_corrupted_byte_loses_the_frame_not_the_stream(payload, pos, xor):
    first = bytearray(encode_message(seq=1, opcode=Op.PULSE, payload=payload))
    i = 1 + pos % (len(first) - 2)  # keep the delimiters, damage the body
    first[i] ^= xor
    dec = FrameDecoder()
    frames = dec.feed(bytes(first) + encode_message(seq=2, opcode=Op.PULSE, payload=payload))
    assert [f.seq for f in frames][-1] == 2
    assert all(f.seq != 1 or f.payload == payload for f in frames)


def test_large_payloads_are_chunked():
    payload = bytes(range(256)) * 200
    wire = encode_message(seq=3, opcode=Op.READ_REGION, payload=payload)
    frames = FrameDecoder().feed(wire)
    assert len(frames) == -(-len(payload) // MAX_PAYLOAD)


def _serve(server: ServerSession, wire: bytes, executed: list) -> bytes:
    reqs, out = server.receive_data(wire)
    for r in reqs:
        executed.append(r.seq)
        out += server.respond(r, Status.OK, r.payload[::-1])
    return out


def test_retried_request_is_replayed_not_executed_twice():
    client, server, executed = ClientSession(), ServerSession(), []
    wire = client.request(Op.PULSE, b"abc")
    _serve(server, wire, executed)  # reply lost
    reply = client.receive_data(_serve(server, client.retransmit(), executed))
    assert reply is not None and reply.payload == b"cba"
    assert executed == [1]
    assert server.replays == 1


def test_stale_request_is_dropped_and_late_reply_ignored():
    client, server, executed = ClientSession(), ServerSession(), []
    old = client.request(Op.PULSE, b"one")
    late_reply = _serve(server, old, executed)
    assert client.receive_data(late_reply) is not None
    new = client.request(Op.PULSE, b"two")
    assert client.receive_data(late_reply) is None  # a late copy of the old reply
    new_reply = _serve(server, new, executed)
    assert _serve(server, old, executed) == b""  # a late copy of the old request: not executed
    assert client.receive_data(new_reply).payload == b"owt"
    assert executed == [1, 2]


def test_hello_rebases_sequence_numbers_for_a_restarted_host():
    server, executed = ServerSession(), []
    first = ClientSession(first_seq=100)
    _serve(server, first.request(Op.HELLO, b""), executed)
    _serve(server, first.request(Op.PULSE, b"x"), executed)
    restarted = ClientSession(first_seq=1)
    assert restarted.receive_data(_serve(server, restarted.request(Op.HELLO, b""), executed)) is not None
    assert restarted.receive_data(_serve(server, restarted.request(Op.PULSE, b"y"), executed)) is not None
    assert executed == [100, 101, 1, 2]


def test_wrong_protocol_version_gets_a_clear_refusal():
    from protocols.framing import Frame, encode_frame

    server = ServerSession()
    wire = encode_frame(Frame(9, 0, 5, Op.HELLO, 0, 0, 1, b""))
    reqs, out = server.receive_data(wire)
    assert reqs == []
    client = ClientSession(first_seq=5)
    client.request(Op.HELLO, b"")
    reply = client.receive_data(out)
    assert reply.status == Status.VERSION_MISMATCH
    assert b"not supported" in reply.payload


def test_version_1_requests_are_still_served_in_version_1():
    """Version 2 added pulse widths; a version-1 host's PULSE (no flag byte) still works."""
    import numpy as np

    from firmware_stub.firmware import make_emulator
    from protocols import messages as m
    from protocols.framing import FrameDecoder

    endpoint = make_emulator(4, 4, seed=0)
    old = ClientSession(version=1)
    wire = endpoint.receive(old.request(Op.PULSE, m.encode_pulse_request(np.array([1, 5]), np.array([2, -1]), 7,
                                                                         version=1)))
    assert {f.version for f in FrameDecoder().feed(wire)} == {1}  # answered in the request's version
    reply = old.receive_data(wire)
    assert reply.status == Status.OK
    r = m.decode_pulse_result(reply.payload)
    assert (r.devices, r.set_pulses, r.reset_pulses) == (2, 2, 1)
    with pytest.raises(ValueError, match="version 1 has no pulse widths"):
        m.encode_pulse_request(np.array([1]), np.array([1]), 0, np.array([3]), version=1)
    # a version-2 payload sent as version 1 is malformed there, and says so
    reply = old.receive_data(endpoint.receive(old.request(
        Op.PULSE, m.encode_pulse_request(np.array([1]), np.array([1]), 0, np.array([3]), version=2))))
    assert reply.status == Status.BAD_REQUEST and b"PULSE" in reply.payload
