"""Protocol version 3: sessions, selective chunk retransmission, bounded reassembly, BUSY, fuzzing."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers import PulseBatch, open_board
from drivers.errors import InstrumentError
from firmware_stub.firmware import make_emulator
from protocols import messages as m
from protocols.framing import FLAG_CONTROL, FLAG_RESPONSE, Frame, FrameDecoder, encode_frame
from protocols.messages import Op, Status
from protocols.session import (
    HAVE,
    MAX_MESSAGE_BYTES,
    ClientSession,
    SessionServer,
    decode_control,
    encode_control,
)


def _open(endpoint, client: ClientSession) -> None:
    reply = client.receive_data(endpoint.receive(client.request(Op.HELLO, client.hello_payload())))
    assert reply is not None and reply.status == Status.OK


def _pulse_payload(flat, counts, tag=0):
    return m.encode_pulse_request(np.asarray(flat), np.asarray(counts), tag)


def test_every_reply_names_session_seq_and_opcode():
    endpoint = make_emulator(4, 4, seed=0)
    client = ClientSession(session_id=77)
    wire = endpoint.receive(client.request(Op.HELLO, client.hello_payload()))
    frames = FrameDecoder().feed(wire)
    assert frames and all((f.session, f.seq, f.opcode) == (77, 1, Op.HELLO) and f.is_response for f in frames)


def test_a_reply_cached_for_one_session_never_answers_another():
    """The tester's bug: a PULSE reply cached at seq 1 answered every later host's HELLO at seq 1."""
    endpoint = make_emulator(4, 4, seed=0)
    first = ClientSession(session_id=1, first_seq=1)
    _open(endpoint, first)  # seq 1 = HELLO
    first.request(Op.PULSE, b"")  # seq 2 ...
    first.abandon()  # ... given up
    endpoint.receive(first.request(Op.PULSE, _pulse_payload([1], [1])))  # ... seq 3 executed, reply cached
    second = ClientSession(session_id=2, first_seq=3)  # the same seq, another host
    reply = second.receive_data(endpoint.receive(second.request(Op.HELLO, second.hello_payload())))
    assert reply.status == Status.OK and m.decode_json(reply.payload, "HELLO")["rows"] == 4


def test_the_client_ignores_a_reply_with_the_wrong_opcode_or_session():
    endpoint = make_emulator(4, 4, seed=0)
    client = ClientSession(session_id=5)
    _open(endpoint, client)
    client.request(Op.CLOCK, b"")
    seq = client.pending_seq
    for session, opcode in ((5, Op.STATUS), (6, Op.CLOCK)):
        bad = encode_frame(Frame(3, FLAG_RESPONSE, seq, opcode, 0, 0, 1, m.encode_f64(1.0), session))
        assert client.receive_data(b"\x00" + bad) is None
    assert client.foreign_frames == 2
    good = encode_frame(Frame(3, FLAG_RESPONSE, seq, Op.CLOCK, 0, 0, 1, m.encode_f64(1.0), 5))
    assert client.receive_data(b"\x00" + good).opcode == Op.CLOCK


def test_stale_and_reused_sequence_numbers_are_not_executed():
    endpoint = make_emulator(4, 4, seed=0)
    client = ClientSession(session_id=9, first_seq=10)
    _open(endpoint, client)
    old = client.request(Op.PULSE, _pulse_payload([0], [1]))
    assert m.decode_pulse_result(client.receive_data(endpoint.receive(old)).payload).set_pulses == 1
    client.receive_data(endpoint.receive(client.request(Op.CLOCK, b"")))
    pulses = endpoint.firmware.array.counters.pulses_total
    assert endpoint.receive(old) == b""  # a stale copy: dropped
    assert endpoint.firmware.array.counters.pulses_total == pulses
    # the executed seq again under another opcode: refused, not answered from the cache
    reused = encode_frame(Frame(3, 0, 12, Op.PULSE, 0, 0, 1, _pulse_payload([0], [1]), 9))
    out = FrameDecoder().feed(endpoint.receive(b"\x00" + reused))
    assert out[0].status == Status.BAD_REQUEST and b"another opcode" in out[0].payload
    assert endpoint.firmware.array.counters.pulses_total == pulses
    assert endpoint.sessions.stale_requests >= 1


def test_a_lost_chunk_is_resent_alone_and_the_request_executed_once():
    endpoint = make_emulator(32, 32, seed=0)
    client = ClientSession(session_id=3, chunk_bytes=64)
    _open(endpoint, client)
    flat = np.arange(0, 1024, 3)
    wire = client.request(Op.PULSE, _pulse_payload(flat, np.ones(flat.size, np.int64)))
    frames = [b"\x00" + f + b"\x00" for f in wire.split(b"\x00") if f]
    assert len(frames) > 4
    lost = 2
    out = b"".join(endpoint.receive(f) for i, f in enumerate(frames) if i != lost)
    have = [f for f in FrameDecoder().feed(out) if f.is_control]
    assert len(have) == 1  # the last chunk came with a gap before it: the board asks at once
    kind, bits = decode_control(have[0].payload)
    assert kind == HAVE and list(np.flatnonzero(~bits)) == [lost]
    assert client.receive_data(out) is None
    resend = client.take_outbox()
    assert len(resend) < 2 * len(frames[lost])  # only the missing chunk
    reply = client.receive_data(endpoint.receive(resend))
    assert reply.status == Status.OK and m.decode_pulse_result(reply.payload).devices == flat.size
    assert endpoint.firmware.array.counters.pulses_total == flat.size


def test_a_lost_reply_chunk_is_resent_on_poll_not_reexecuted():
    endpoint = make_emulator(16, 16, seed=0)
    client = ClientSession(session_id=4, chunk_bytes=64)
    _open(endpoint, client)
    reads_before = endpoint.firmware.array.counters.cells_read_total
    out = endpoint.receive(client.request(Op.READ_REGION, m.encode_region(0, 0, 16, 16)))
    chunks = [b"\x00" + f + b"\x00" for f in out.split(b"\x00") if f]
    assert client.receive_data(b"".join(chunks[:3] + chunks[4:])) is None  # chunk 3 lost; the last one asked
    poll = client.take_outbox()
    reply = client.receive_data(endpoint.receive(poll))
    assert reply is not None and len(reply.payload) == 2 * 256
    assert endpoint.firmware.array.counters.cells_read_total == reads_before + 256  # read once
    assert endpoint.sessions.chunks_resent == 1


def test_reassembly_memory_is_capped_and_freed():
    server = SessionServer(max_message_bytes=10_000)
    client = ClientSession(session_id=8, chunk_bytes=1000)
    dec = FrameDecoder()
    reqs, _ = server.receive_frames(dec.feed(client.request(Op.HELLO, client.hello_payload())))
    client.receive_data(server.respond(reqs[0], Status.OK, b"{}"))
    wire = client.request(Op.RESTORE, bytes(50_000))
    frames = dec.feed(wire)
    peak, replies = 0, b""
    for f in frames:
        _, out = server.receive_frames([f])
        replies += out
        peak = max(peak, server.reassembly_bytes)
    assert peak <= 10_000
    refusal = [f for f in FrameDecoder().feed(replies) if not f.is_control]
    assert refusal[0].status == Status.BAD_REQUEST and b"limit" in refusal[0].payload
    assert client.receive_data(replies).status == Status.BAD_REQUEST
    # a half-sent request is dropped on disconnect
    server.receive_frames(dec.feed(client.request(Op.RESTORE, bytes(5000)))[:2])
    assert server.reassembly_bytes == 2000
    server.drop_incomplete()
    assert server.reassembly_bytes == 0


def test_an_idle_incomplete_request_is_dropped():
    now = [0.0]
    server = SessionServer(idle_sec=10.0, clock=lambda: now[0])
    client = ClientSession(session_id=8, chunk_bytes=100)
    dec = FrameDecoder()
    reqs, _ = server.receive_frames(dec.feed(client.request(Op.HELLO, client.hello_payload())))
    client.receive_data(server.respond(reqs[0], Status.OK, b"{}"))
    server.receive_frames(dec.feed(client.request(Op.RESTORE, bytes(1000)))[:3])
    assert server.reassembly_bytes == 300
    now[0] = 11.0
    server.receive_frames([])
    assert server.reassembly_bytes == 0


def test_a_request_without_a_session_gets_a_clear_refusal():
    endpoint = make_emulator(4, 4, seed=0)
    client = ClientSession(session_id=99)
    reply = client.receive_data(endpoint.receive(client.request(Op.CLOCK, b"")))
    assert reply.status == Status.BAD_REQUEST and b"HELLO" in reply.payload


def _frames_strategy():
    header = st.tuples(st.sampled_from([1, 2, 3, 4, 5, 5, 5, 9]), st.integers(0, 255), st.integers(0, 40),
                       st.sampled_from([int(o) for o in Op] + [0x99]), st.integers(0, 3), st.integers(1, 4),
                       st.sampled_from([None, 1, 2, 0xFFFFFFFF]))
    return st.lists(st.tuples(header, st.binary(max_size=200)), min_size=100, max_size=100)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=_frames_strategy(), noise=st.binary(max_size=64))
def test_fuzzed_frames_leave_the_firmware_serving_the_next_client(fuzz_endpoint, batch, noise):
    """100 examples x 100 frames = 10,000 valid-CRC frames of random headers and payloads."""
    endpoint = fuzz_endpoint
    for (version, flags, seq, opcode, status, count, session), payload in batch:
        if flags & FLAG_CONTROL and payload[:1] in (b"\x01", b"\x02") and len(payload) >= 5:
            payload = encode_control(payload[0], np.frombuffer(payload[5:], np.uint8)[:40] > 127)
        wire = encode_frame(Frame(version, flags & 0x1F, seq, opcode, status, seq % count, count, payload, session))
        endpoint.receive(wire)
        assert endpoint.reassembly_bytes <= MAX_MESSAGE_BYTES
    endpoint.receive(noise)
    endpoint.disconnect()
    client = ClientSession()
    _open(endpoint, client)
    reply = client.receive_data(endpoint.receive(client.request(Op.CLOCK, b"")))
    assert reply.status == Status.OK


@pytest.fixture(scope="module")
def fuzz_endpoint():
    return make_emulator(8, 8, seed=0)


def test_a_second_host_gets_busy_at_once_and_the_first_keeps_working(tcp_emulator):
    with open_board(f"serial:{tcp_emulator.url}") as first:
        with pytest.raises(InstrumentError, match="in use by another host.*BUSY"):
            open_board(f"serial:{tcp_emulator.url}?timeout=120&retries=0")  # an answer, not a timeout
        first.pulse(PulseBatch(np.array([0]), np.array([0]), np.array([1])))
    with open_board(f"serial:{tcp_emulator.url}") as after:  # the board is free again
        assert after.info.rows == 32


def test_a_host_that_disconnects_mid_message_leaves_the_board_serving(tcp_emulator):
    client = ClientSession(session_id=1234, chunk_bytes=256)
    with socket.create_connection((tcp_emulator.host, tcp_emulator.port)) as s:
        s.sendall(client.request(Op.HELLO, client.hello_payload()))
        client.abandon()  # (its reply is not read)
        wire = client.request(Op.RESTORE, bytes(20_000))
        s.sendall(wire[: len(wire) // 2])  # half a message, then the host vanishes
        s.recv(65536)
    deadline = time.monotonic() + 120  # a hang guard: the server frees the memory when it sees the disconnect
    while tcp_emulator.endpoint.reassembly_bytes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tcp_emulator.endpoint.reassembly_bytes == 0
    with open_board(f"serial:{tcp_emulator.url}") as board:
        assert board.clock() >= 0
    assert tcp_emulator.endpoint.reassembly_bytes == 0
