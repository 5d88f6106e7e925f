"""Protocol version 5: a window of requests in flight, executed in order and exactly once.

The protocol properties are checked on the session objects directly (a deterministic line
that loses whole frames as hypothesis chooses); the end-to-end property through the real
lossy TCP proxy; older firmware, a second host and a host that vanishes with requests in
flight through the real TCP server.
"""

from __future__ import annotations

import logging
import socket
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers import BoardTimeout, LimitViolation, PulseBatch, Region, open_board
from drivers.errors import InstrumentError
from drivers.fpga import FpgaBoard
from drivers.links import InProcessLink
from firmware_stub.firmware import make_emulator
from firmware_stub.serve import TcpServer, serve_in_thread
from protocols import messages as m
from protocols.framing import FLAG_AFTER_PREVIOUS, FrameDecoder
from protocols.messages import Op, Status
from protocols.session import DEFAULT_WINDOW, MAX_IN_FLIGHT, ClientSession, SessionServer
from tests.faults import FaultyTcpProxy

log = logging.getLogger(__name__)


# ---- the session objects on a line that loses frames -------------------------------------------------
def _frames(wire: bytes) -> list[bytes]:
    return [b"\x00" + f + b"\x00" for f in wire.split(b"\x00") if f]


class Line:
    """Whole frames lost as a list of booleans says (then none): damage a CRC would catch."""

    def __init__(self, losses: list[bool]):
        self.losses = list(losses)
        self.lost = 0

    def __call__(self, wire: bytes) -> bytes:
        kept = []
        for f in _frames(wire):
            if self.losses and self.losses.pop(0):
                self.lost += 1
            else:
                kept.append(f)
        return b"".join(kept)


class Board:
    """A session server in front of a journal of executed requests (the firmware's stand-in)."""

    def __init__(self, max_message_bytes: int = 1 << 20):
        self.server = SessionServer(max_message_bytes=max_message_bytes)
        self.decoder = FrameDecoder()
        self.executed: list[bytes] = []
        self.peak_bytes = 0

    def receive(self, wire: bytes) -> bytes:
        requests, out = [], b""
        for frame in self.decoder.feed(wire):
            new, sent = self.server.receive_frames([frame])
            requests, out = requests + new, out + sent
            self.peak_bytes = max(self.peak_bytes, self.server.reassembly_bytes)
        for r in requests:
            if r.opcode != Op.HELLO:
                self.executed.append(r.payload)
            reply = m.encode_json({"max_in_flight": MAX_IN_FLIGHT}) if r.opcode == Op.HELLO else r.payload[::-1]
            out += self.server.respond(r, Status.OK, reply)
        return out


def _run_window(client: ClientSession, board: Board, payloads: list[bytes], up: Line, down: Line,
                max_rounds: int = 2000) -> dict[int, bytes]:
    """Send ``payloads`` through the window; poll every request in flight whenever the line falls silent."""
    todo = list(payloads)
    seq_of: dict[int, int] = {}
    replies: dict[int, bytes] = {}
    for _ in range(max_rounds):
        sent = b""
        while todo and not client.window_full:
            sent += client.request(Op.PULSE, todo[0])
            seq_of[client.seq] = len(payloads) - len(todo)
            todo.pop(0)
        back = board.receive(up(sent)) if sent else b""
        progress = client.progress
        while True:
            client.feed(down(back))
            for seq in list(seq_of):
                msg = client.take_reply(seq)
                if msg is not None:
                    replies[seq_of.pop(seq)] = msg.payload
            out = client.take_outbox()
            if not out:
                break
            back = board.receive(up(out))
        if not todo and not client.in_flight:
            return replies
        if client.progress == progress and not sent:  # silence: the host's timeout, then a poll of each
            back = board.receive(up(client.poll_all()))
            client.feed(down(back))
            for seq in list(seq_of):
                msg = client.take_reply(seq)
                if msg is not None:
                    replies[seq_of.pop(seq)] = msg.payload
    raise AssertionError("the window did not drain")


def _open(client: ClientSession, board: Board) -> None:
    reply = client.receive_data(board.receive(client.request(Op.HELLO, client.hello_payload())))
    assert reply is not None and reply.status == Status.OK
    client.grant(m.decode_json(reply.payload, "HELLO")["max_in_flight"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(window=st.integers(1, MAX_IN_FLIGHT), n=st.integers(1, 40),
       first_seq=st.sampled_from([1, 2**32 - 5, 2**32 - 1, 2**31]),
       sizes=st.lists(st.integers(0, 700), min_size=1, max_size=8),
       up=st.lists(st.booleans(), max_size=150), down=st.lists(st.booleans(), max_size=150))
def test_every_request_executes_once_in_order_whatever_frames_are_lost(window, n, first_seq, sizes, up, down):
    client = ClientSession(session_id=7, chunk_bytes=64, first_seq=first_seq, window=window)
    board = Board()
    _open(client, board)
    assert client.window == window
    payloads = [bytes([i % 251]) * sizes[i % len(sizes)] + i.to_bytes(2, "little") for i in range(n)]
    replies = _run_window(client, board, payloads, Line(up), Line(down))
    assert board.executed == payloads  # each once, in the order sent (sequence numbers wrapped or not)
    assert [replies[i] for i in range(n)] == [p[::-1] for p in payloads]
    assert board.server.max_held <= window  # at most a window of requests held ...
    assert board.peak_bytes <= board.server.max_message_bytes  # ... within the memory cap


def test_a_window_full_of_lost_replies_is_replayed_not_reexecuted():
    client, board = ClientSession(session_id=3, window=DEFAULT_WINDOW), Board()
    _open(client, board)
    wire = b"".join(client.request(Op.PULSE, bytes([i]) * 10) for i in range(DEFAULT_WINDOW))
    board.receive(wire)  # every reply lost
    assert len(board.executed) == DEFAULT_WINDOW and client.in_flight == DEFAULT_WINDOW
    client.feed(board.receive(client.poll_all()))
    got = [client.take_reply(seq) for seq in range(2, 2 + DEFAULT_WINDOW)]
    assert [g.payload for g in got] == [bytes([i]) * 10 for i in range(DEFAULT_WINDOW)]
    assert len(board.executed) == DEFAULT_WINDOW  # replayed from the per-session cache
    assert board.server.chunks_resent == DEFAULT_WINDOW


def test_a_later_request_waits_for_a_lost_earlier_one():
    client, board = ClientSession(session_id=4, window=4), Board()
    _open(client, board)
    first = client.request(Op.PULSE, b"first")
    second = client.request(Op.PULSE, b"second")
    assert FrameDecoder().feed(second)[0].flags & FLAG_AFTER_PREVIOUS  # sent with one in flight
    assert board.receive(second) == b"" and board.executed == []  # held: its predecessor is missing
    client.feed(board.receive(client.poll_all()))  # the board says it has nothing of the first ...
    board_out = board.receive(client.take_outbox() + first)  # ... which the host resends
    assert board.executed == [b"first", b"second"]
    client.feed(board_out)
    assert client.take_reply(2).payload == b"tsrif" and client.take_reply(3).payload == b"dnoces"


def test_requests_given_up_do_not_block_the_next_one():
    client, board = ClientSession(session_id=5, window=4), Board()
    _open(client, board)
    client.request(Op.PULSE, b"lost")
    board.receive(client.request(Op.PULSE, b"held"))  # waits for "lost", which never comes
    assert client.abandon() == [2, 3]
    reply = client.receive_data(board.receive(client.request(Op.PULSE, b"next")))
    assert reply.payload == b"txen" and board.executed == [b"next"]
    assert board.server.reassembly_bytes == 0  # the held request was dropped, not executed later
    assert board.receive(client.request(Op.PULSE, b"after")) and board.executed == [b"next", b"after"]


def test_reassembly_holds_at_most_the_cap_and_still_completes():
    client, board = ClientSession(session_id=6, chunk_bytes=1000, window=4), Board(max_message_bytes=12_000)
    _open(client, board)
    payloads = [bytes([i]) * 9_000 for i in range(4)]  # each fits, no two together
    replies = _run_window(client, board, payloads, Line([True]), Line([]))  # the first chunk lost: the rest wait
    assert board.executed == payloads and len(replies) == 4
    assert board.server.dropped_chunks > 0  # later requests' chunks were not kept ...
    assert 8_000 <= board.peak_bytes <= 12_000  # ... so the memory stayed under the cap


# ---- the driver ---------------------------------------------------------------------------------------
def test_window_is_negotiated_and_older_firmware_gets_one_request_at_a_time():
    with open_board("emu?rows=8&cols=8") as board:
        assert (board.protocol_version, board.window) == (5, DEFAULT_WINDOW)
    with open_board("emu?rows=8&cols=8&window=2") as board:
        assert board.window == 2
    for supported, version in (((1, 2, 3, 4), 4), ((1, 2), 2), ((1,), 1)):
        endpoint = make_emulator(8, 8, seed=0)
        endpoint.firmware.supported_versions = supported
        with FpgaBoard(InProcessLink(endpoint)) as board:
            assert (board.protocol_version, board.window) == (version, 1)
            assert board.info.capabilities.partial_pulses == (version >= 2)  # pulse widths came with version 2
            handles = [board.pulse_async(PulseBatch(np.array([i]), np.array([0]), np.array([1]))) for i in range(3)]
            assert [h.result().set_pulses for h in handles] == [1, 1, 1]


def test_a_read_sent_after_an_unanswered_pulse_sees_it_applied():
    with open_board("emu?rows=8&cols=8&seed=3") as board:
        before = board.read_cells(np.array([2]), np.array([5]))
        handle = board.pulse_async(PulseBatch(np.array([2]), np.array([5]), np.array([5])))
        assert not handle.done  # the report has not been read yet
        after = board.read_cells(np.array([2]), np.array([5]))
        assert handle.done and handle.result().set_pulses == 5
        assert after[0] > before[0]


def test_a_refused_batch_sent_without_waiting_is_raised_by_the_next_waiting_call():
    endpoint = make_emulator(8, 8, seed=0)
    with FpgaBoard(InProcessLink(endpoint)) as board:
        board.pulse(PulseBatch(np.array([0]), np.array([0]), np.array([1])))
        endpoint.firmware.limits = type(endpoint.firmware.limits)(max_pulses_per_device=1)  # stricter than HELLO said
        handle = board.pulse_async(PulseBatch(np.array([1]), np.array([1]), np.array([2])))
        with pytest.raises(LimitViolation, match="refused PULSE"):
            board.clock()
        with pytest.raises(LimitViolation):
            handle.result()
        assert board.clock() >= 0  # the board goes on serving


class _Silent:
    """An in-process link that can go silent (cable pulled), then come back."""

    def __init__(self, inner: InProcessLink):
        self.inner, self.cut = inner, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def write(self, data: bytes) -> None:
        if not self.cut:
            self.inner.write(data)


def test_a_timeout_gives_up_every_request_in_flight_and_the_session_recovers():
    endpoint = make_emulator(8, 8, seed=0)
    link = _Silent(InProcessLink(endpoint))
    with FpgaBoard(link, timeout_sec=0.01, retries=1) as board:
        board.pulse(PulseBatch(np.array([0]), np.array([0]), np.array([1])))
        link.cut = True
        handles = [board.pulse_async(PulseBatch(np.array([i]), np.array([1]), np.array([1]))) for i in range(3)]
        with pytest.raises(BoardTimeout, match="did not answer PULSE"):
            board.vmm(Region(0, 0, 8, 8), np.zeros((1, 8)), i_full_scale_a=1e-4)
        for h in handles:
            with pytest.raises(BoardTimeout):
                h.result()
        link.cut = False
        before = endpoint.firmware.array.counters.pulses_total
        board.pulse(PulseBatch(np.array([7]), np.array([7]), np.array([1])))  # not held behind the lost ones
        assert endpoint.firmware.array.counters.pulses_total == before + 1


# ---- through real sockets -------------------------------------------------------------------------------
ROWS, COLS, SEED = 16, 24, 4


def _steps(board, n: int = 30) -> list[np.ndarray]:
    """Training-shaped steps: VMM, then a tagged batch sent without waiting, twice a READ of cells."""
    rng = np.random.default_rng(SEED)
    outs = []
    region = Region(0, 0, ROWS, COLS)
    for step in range(n):
        outs.append(board.vmm(region, rng.uniform(-0.1, 0.1, (4, ROWS)), i_full_scale_a=1e-4))
        flat = np.sort(rng.choice(ROWS * COLS, size=12, replace=False))
        counts = rng.integers(1, 3, 12) * rng.choice([-1, 1], 12)
        board.pulse_async(PulseBatch(flat // COLS, flat % COLS, counts), tag=step + 1)
        if step % 15 == 0:
            outs.append(board.read_cells(flat // COLS, flat % COLS))
    outs.append(np.array([board.clock()]))
    return outs


def test_exactly_once_through_a_lossy_proxy_with_the_window_in_use():
    """0.1 % of bytes flipped and 0.05 % dropped both ways: every batch applied once, in order, so
    every VMM and read answers exactly as on a clean in-process board with one request in flight."""
    with open_board(f"emu?rows={ROWS}&cols={COLS}&seed={SEED}&window=1") as clean:
        expected = _steps(clean)
        clean_status = clean.status()
        clean_digest = clean.link.endpoint.firmware.array.state_digest()
    server = TcpServer(make_emulator(ROWS, COLS, seed=SEED))
    thread = serve_in_thread(server)
    proxy = FaultyTcpProxy((server.host, server.port), seed=9, corrupt=1e-3, drop=5e-4)
    try:
        with open_board(f"serial:socket://127.0.0.1:{proxy.port}?timeout=0.05&retries=20&chunk=128") as bad:
            assert bad.window == DEFAULT_WINDOW
            got = _steps(bad)
            bad_status = bad.status()
            polls = bad.retransmissions
        log.info("%d faults, %d polls, %d chunks resent, %d requests held at most", proxy.total_faults, polls,
                 server.endpoint.sessions.chunks_resent, server.endpoint.sessions.max_held)
        assert proxy.total_faults > 10 and polls > 0  # the line was bad throughout, and it showed
        assert server.endpoint.sessions.max_held > 1  # requests were in flight together
        for a, b in zip(expected, got, strict=True):
            np.testing.assert_array_equal(a, b)
        assert bad_status.pulses_total == clean_status.pulses_total  # none twice, none lost
        assert bad_status.last_pulse_tag == clean_status.last_pulse_tag == 30
        assert server.endpoint.firmware.array.state_digest() == clean_digest  # the same board, bit for bit
    finally:
        proxy.close()
        server.stop.set()
        thread.join(5)


def test_a_host_that_vanishes_with_requests_in_flight_and_a_second_host(tcp_emulator):
    client = ClientSession(session_id=4321, chunk_bytes=64, window=4)
    pulses = tcp_emulator.endpoint.firmware.array.counters.pulses_total
    with socket.create_connection((tcp_emulator.host, tcp_emulator.port)) as s:
        s.sendall(client.request(Op.HELLO, client.hello_payload()))
        dec = FrameDecoder()
        while not any(not f.is_control for f in dec.feed(s.recv(65536))):
            pass
        client.abandon()
        client.grant(4)
        with pytest.raises(InstrumentError, match="in use by another host.*BUSY"):
            open_board(f"serial:{tcp_emulator.url}?timeout=120&retries=0")  # BUSY at once, not a timeout
        body = m.encode_pulse_request(np.arange(0, 400, 4), np.ones(100, np.int64), 0)  # 4 chunks each
        wire = client.request(Op.PULSE, body) + client.request(Op.PULSE, body) + client.request(Op.PULSE, body)
        s.sendall(wire[: len(wire) - 40])  # the last request cut short, then the host vanishes
        deadline = time.monotonic() + 120  # a hang guard
        while tcp_emulator.endpoint.reassembly_bytes == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert tcp_emulator.endpoint.reassembly_bytes > 0  # the cut request is held
    # the server frees the memory and the board when it sees the disconnect
    while (tcp_emulator.endpoint.reassembly_bytes or tcp_emulator._owner) and time.monotonic() < deadline + 120:
        time.sleep(0.01)
    assert tcp_emulator.endpoint.reassembly_bytes == 0
    with open_board(f"serial:{tcp_emulator.url}") as board:
        assert board.window == DEFAULT_WINDOW
        board.pulse_async(PulseBatch(np.array([1]), np.array([1]), np.array([1])))
        assert board.status().pulses_total == pulses + 2 * 100 + 1  # two whole batches, once each; the cut one never
