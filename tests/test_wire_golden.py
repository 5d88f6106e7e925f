"""Golden wire bytes: a fixed sequence of every message of the FPGA protocol, pinned by SHA-256.

Pins the exact bytes each side sends -- host to board and board to host -- for a seeded,
deterministic conversation with the emulated firmware (in process, no sockets): HELLO in each
protocol version (1 to 5, and refused versions), every request and reply type, refusals,
chunked messages, lost request and reply chunks recovered by HAVE and POLL, replays of executed
requests, pipelined requests with the after-previous flag delivered out of order, stale and reused
sequence numbers, unknown sessions and a BUSY answer.  A second transcript pins the payload codec
on its own, with fixed inputs and no physics.  A refactoring of :mod:`protocols` must leave both
hashes unchanged; a deliberate change of the protocol updates them (and says so).
"""

from __future__ import annotations

import hashlib

import numpy as np

from firmware_stub.firmware import make_emulator
from protocols import encoding as enc
from protocols import messages as m
from protocols.framing import (
    FLAG_AFTER_PREVIOUS,
    FLAG_CONTROL,
    Frame,
    FrameDecoder,
    encode_frame,
)
from protocols.messages import Op, Status
from protocols.session import (
    HAVE,
    POLL,
    BusyResponder,
    ClientSession,
    LegacyClientSession,
    SessionServer,
    encode_control,
    encode_hello,
)

# every figure below was computed on the protocol code before its restructuring (issue 12)
CONVERSATION_SHA256 = {
    "up": "a467368f7046a58fc3a56c16e23f804c57661811e0c987165270266ebbb1b375",
    "down": "5fc8c8f16b5834e63cef1fca4ad70cc0931e0786f1c4750e265357cfcaa2c41e",
}
CONVERSATION_BYTES = {"up": 12928, "down": 24461}
CODEC_SHA256 = "612cb09321dcf479c3c77846fd8c204338c03975ff7a585b21811189e9533ebe"
CODEC_BYTES = 14164


def _frames(wire: bytes) -> list[bytes]:
    return [b"\x00" + f + b"\x00" for f in wire.split(b"\x00") if f]


class _Wire:
    """The emulated board with both directions of its byte stream recorded."""

    def __init__(self, rows: int = 8, cols: int = 8, seed: int = 3, versions: tuple[int, ...] | None = None):
        self.endpoint = make_emulator(rows, cols, seed=seed)
        self.endpoint.sessions = SessionServer(clock=lambda: 0.0)  # idle expiry never depends on the test's pace
        if versions is not None:
            self.endpoint.firmware.supported_versions = versions
        self.up = bytearray()
        self.down = bytearray()

    def send(self, wire: bytes) -> bytes:
        self.up += wire
        out = self.endpoint.receive(wire)
        self.down += out
        return out


def _settle(wire: _Wire, client, seq: int, back: bytes, keep_reply=None):
    """Feed ``back`` to the client (dropping reply frames ``keep_reply`` rejects) until ``seq`` is answered,
    answering the client's outbox and, on silence, its polls."""
    for _ in range(50):
        frames = _frames(back)
        if keep_reply is not None:
            frames = [f for i, f in enumerate(frames) if keep_reply(i)]
            keep_reply = None
        client.feed(b"".join(frames))
        reply = client.take_reply(seq)
        if reply is not None:
            return reply
        out = client.take_outbox()
        back = wire.send(out if out else client.poll_all())
    raise AssertionError(f"no reply to seq {seq}")


def _call(wire: _Wire, client, opcode: int, payload: bytes = b"", drop_request=None, keep_reply=None):
    request = client.request(opcode, payload)
    seq = client.seq
    frames = _frames(request)
    if drop_request is not None:
        frames = [f for i, f in enumerate(frames) if not drop_request(i)]
    return _settle(wire, client, seq, wire.send(b"".join(frames)), keep_reply)


def _hello(wire: _Wire, client) -> dict:
    reply = _call(wire, client, Op.HELLO, client.hello_payload())
    info = m.decode_json(reply.payload, "HELLO reply")
    if reply.status == Status.OK:
        client.grant(int(info.get("max_in_flight", 1)))
    return info


def _every_request(wire: _Wire, client, version: int) -> None:
    """One of each request, in the layout of ``version``; the board's replies are what they are."""
    info = _hello(wire, client)
    dac_bits = info["dac_bits"] if version >= 4 else None
    _call(wire, client, Op.SET_PROFILES, m.encode_profiles(1.2, 50e-9, -1.1, 50e-9))
    ticks = np.array([0, 37, 0]) if version >= 2 else None
    _call(wire, client, Op.PULSE, m.encode_pulse_request(np.array([1, 9, 40]), np.array([2, -1, 3]), tag=version,
                                                         last_width_ticks=ticks, version=version))
    _call(wire, client, Op.READ_REGION, m.encode_region(1, 2, 3, 4))
    _call(wire, client, Op.READ_CELLS, m.encode_cells(np.array([0, 5, 63])))
    codes = (np.arange(2 * 3).reshape(2, 3) % 7 - 3).astype(np.int8 if dac_bits is None else np.int64)
    _call(wire, client, Op.VMM, m.encode_vmm_request(m.VmmRequest(0, 1, 3, 4, False, codes, 1e-4), dac_bits))
    _call(wire, client, Op.VMM, m.encode_vmm_request(m.VmmRequest(2, 0, 3, 2, True, codes[:, :2], 1e-4), dac_bits))


def _v5_every_opcode() -> tuple[_Wire, ClientSession]:
    """Version 5: every opcode once, then the refusals (unknown opcode, limits, bad payloads)."""
    wire = _Wire()
    client = ClientSession(session_id=0x5EED0005, chunk_bytes=64, first_seq=1, window=4)
    _every_request(wire, client, 5)
    _call(wire, client, Op.STATUS)
    _call(wire, client, Op.STATUS, b"\x01")
    _call(wire, client, Op.TRUE_PARAMS)
    _call(wire, client, Op.PROGRAM, m.encode_program_request(np.array([3, 4, 20]), np.array([900, 1500, 2500]),
                                                             2e-6, 20, 4))
    _call(wire, client, Op.FORM, m.encode_form_request(np.array([7, 8]), 2.5, 1e-6, 1e-4))
    _call(wire, client, Op.IV_SWEEP, m.encode_iv_request(np.array([10, 11]), np.linspace(-0.5, 0.5, 5), 1e-6, 1e-4))
    _call(wire, client, Op.CLOCK)
    _call(wire, client, Op.WAIT, m.encode_f64(2.5e-3))
    _call(wire, client, Op.SAFE_IDLE)
    snapshot = _call(wire, client, Op.SNAPSHOT).payload
    _call(wire, client, Op.RESTORE, snapshot)
    _call(wire, client, Op.RESTORE, snapshot[:3])  # truncated: BAD_REQUEST
    _call(wire, client, 0x99, b"\x01\x02")  # UNKNOWN_OPCODE
    _call(wire, client, Op.SET_PROFILES, m.encode_profiles(9.0, 50e-9, -1.1, 50e-9))  # LIMIT_VIOLATION
    _call(wire, client, Op.SET_PROFILES, b"\x00" * 7)  # short payload: BAD_REQUEST
    _call(wire, client, Op.READ_REGION, m.encode_region(6, 6, 4, 4))  # outside the array
    _call(wire, client, Op.VMM, b"\x00" * 5)
    return wire, client


def _v5_losses_and_pipelining(wire: _Wire, client: ClientSession) -> None:
    """Lost request and reply chunks, then four requests in flight delivered newest first."""
    # lost request chunks (the board's HAVE names them) and lost reply chunks (the host polls)
    payload = m.encode_pulse_request(np.arange(0, 64, 2), (np.arange(32) % 5 + 1) * (-1) ** np.arange(32), tag=77)
    _call(wire, client, Op.PULSE, payload, drop_request=lambda i: i in (0, 2))
    _call(wire, client, Op.READ_REGION, m.encode_region(0, 0, 8, 8), keep_reply=lambda i: i in (0, 3))
    _call(wire, client, Op.STATUS, b"\x01", keep_reply=lambda i: False)
    # pipelining: four requests in flight, delivered newest first (the after-previous flag orders them)
    wires = [client.request(Op.READ_CELLS, m.encode_cells(np.array([k, k + 8]))) for k in range(3)]
    wires.append(client.request(Op.WAIT, m.encode_f64(1e-6)))
    seqs = [client.seq - 3 + k for k in range(4)]
    back = b"".join(wire.send(w) for w in reversed(wires))
    client.feed(back)
    replies = [client.take_reply(s) for s in seqs]
    assert all(r is not None and r.status == Status.OK for r in replies)


def _v5_replays_and_stray_frames(wire: _Wire, client: ClientSession) -> None:
    """Replays, stale and reused sequence numbers, foreign sessions, garbage controls, an oversize request."""
    # replays, stale and reused sequence numbers, a chunk of an executed request, garbage controls
    wire.send(client.request(Op.CLOCK, b""))  # its reply is lost
    seq = client.seq
    client.feed(wire.send(client.poll(seq)))
    assert client.take_reply(seq) is not None
    sid = client.session_id
    for frame in (
        Frame(5, FLAG_CONTROL, seq, Op.CLOCK, 0, 0, 1, encode_control(POLL, np.zeros(0, bool)), sid),  # replay
        Frame(5, FLAG_CONTROL, seq, Op.WAIT, 0, 0, 1, encode_control(POLL, np.zeros(0, bool)), sid),  # reused
        Frame(5, FLAG_CONTROL, seq - 30, Op.CLOCK, 0, 0, 1, encode_control(POLL, np.zeros(0, bool)), sid),  # stale
        Frame(5, FLAG_CONTROL, seq, Op.CLOCK, 0, 0, 1, encode_control(HAVE, np.zeros(3, bool)), sid),  # not a poll
        Frame(5, FLAG_CONTROL, seq, Op.CLOCK, 0, 0, 1, b"\x01", sid),  # undecodable
        Frame(5, 0, seq, Op.CLOCK, 0, 0, 1, b"", sid),  # executed already: a duplicate
        Frame(5, 0, seq, Op.STATUS, 0, 0, 1, b"", sid),  # reused for another opcode
        Frame(5, 0, seq - 30, Op.CLOCK, 0, 0, 1, b"", sid),  # stale
        Frame(5, FLAG_CONTROL, seq + 1, Op.CLOCK, 0, 0, 1, encode_control(POLL, np.zeros(0, bool)), sid),  # unseen
        Frame(5, FLAG_CONTROL, 3, Op.CLOCK, 0, 0, 1, encode_control(POLL, np.zeros(0, bool)), 0xBAD),  # no session
        Frame(5, 0, 3, Op.CLOCK, 0, 0, 1, b"", 0xBAD),  # no session
        Frame(5, 0, 3, Op.CLOCK, 0, 1, 2, b"", 0xBAD),  # no session, not the first chunk: silence
        Frame(2, 0, seq + 1, Op.CLOCK, 0, 0, 1, b"", sid),  # version 2 with a session field
        Frame(5, FLAG_AFTER_PREVIOUS, seq + 2, Op.CLOCK, 0, 0, 1, b"", sid),  # waits for seq + 1 ...
        Frame(5, 0, seq + 1, Op.CLOCK, 0, 0, 1, b"", sid),  # ... which comes: both run
    ):
        wire.send(b"\x00" + encode_frame(frame))
    # a request larger than the board's limit
    wire.endpoint.sessions.max_message_bytes = 600
    big = client.request(Op.RESTORE, bytes(range(256)) * 4)
    _settle(wire, client, client.seq, wire.send(big))


def _older_versions(up: bytearray, down: bytearray) -> None:
    """Versions 4 and 3 (sessions, packed and byte-wide codes), then 2 and 1 (no sessions, whole resends)."""
    for version, sid in ((4, 0x5EED0004), (3, 0x5EED0003)):
        wire = _Wire(versions=(1, 2, 3, 4) if version == 4 else (1, 2, 3))
        refused = ClientSession(session_id=sid ^ 0xFF, version=version + 1, window=4)
        _hello(wire, refused)  # VERSION_MISMATCH from firmware narrowed to older versions
        client = ClientSession(session_id=sid, chunk_bytes=128, version=version, window=4)
        _every_request(wire, client, version)
        up += wire.up
        down += wire.down
    for version in (2, 1):
        wire = _Wire(versions=(1, 2) if version == 2 else (1,))
        if version == 2:
            _hello(wire, ClientSession(session_id=0x5EED0009, version=3))  # a session frame: refused
            _hello(wire, LegacyClientSession(version=3))  # version 3 without a session field: refused
        client = LegacyClientSession(first_seq=41, max_payload=96, version=version)
        _every_request(wire, client, version)
        wire.send(client.request(Op.CLOCK, b""))  # its reply is lost: resent whole, replayed
        client.feed(wire.send(client.poll()))
        wire.send(encode_frame(Frame(version, 0, 3, Op.CLOCK, 0, 0, 1, b"")))  # stale
        up += wire.up
        down += wire.down


def _second_host(up: bytearray, down: bytearray) -> None:
    """A second host while the board is busy: BUSY at once."""
    busy = BusyResponder("another host is connected")
    second = ClientSession(session_id=0x5EED0010, chunk_bytes=64)
    request = second.request(Op.HELLO, second.hello_payload())
    up += request
    down += busy.receive_data(request)


def _conversation() -> tuple[bytes, bytes]:
    up, down = bytearray(), bytearray()
    wire, client = _v5_every_opcode()
    _v5_losses_and_pipelining(wire, client)
    _v5_replays_and_stray_frames(wire, client)
    up += wire.up
    down += wire.down
    _older_versions(up, down)
    _second_host(up, down)
    return bytes(up), bytes(down)


def _codec_transcript() -> bytes:
    """Payloads of every request and reply encoder, from fixed inputs, with their decodings re-encoded."""
    rng = np.random.default_rng(12)
    flat = np.unique(rng.integers(0, 4096, 300))
    counts = rng.integers(1, 4, flat.size) * rng.choice([-1, 1], flat.size)
    ticks = rng.integers(0, 500, flat.size) * (rng.random(flat.size) < 0.3)
    codes = rng.integers(-31, 32, (3, 17))
    adc = rng.integers(-512, 512, (3, 11))
    parts = [
        encode_hello(1), encode_hello(2), encode_hello(3, 256), encode_hello(4, 512), encode_hello(5, 1024, 8),
        m.encode_json({"b": [1, 2.5, None], "a": "x"}), m.encode_profiles(1.5, 1e-7, -1.25, 2e-7),
        m.encode_pulse_request(flat, counts, 7, version=1), m.encode_pulse_request(flat, counts, 8, ticks, version=2),
        m.encode_pulse_request(flat, counts, 2**63, None, version=5),
        m.encode_pulse_result(m.PulseResult(3, 4, 5, 1.5e-9, 2e-6, 0.125)),
        m.encode_region(1, 2, 300, 400), m.encode_cells(flat), m.encode_codes_u16(np.arange(0, 65536, 257)),
        m.encode_vmm_request(m.VmmRequest(1, 2, 17, 11, False, codes.astype(np.int8), 2e-4)),
        m.encode_vmm_request(m.VmmRequest(1, 2, 11, 17, True, codes, 2e-4), 6),
        m.encode_vmm_result(adc.astype(np.int16)), m.encode_vmm_result(adc, 10),
        m.encode_program_request(flat, (flat * 13) % 65536, 1e-6, 30, 5),
        m.encode_program_result((flat * 7) % 65536, flat % 3 == 0, flat % 40, 1234, 5.5e-8),
        m.encode_f64(np.pi), m.encode_form_request(flat, 3.3, 1e-6, 2e-4),
        m.encode_form_result(flat % 2 == 1, (flat * 5) % 65536),
        m.encode_iv_request(flat, np.linspace(-1, 1, 9), 1e-5, 1e-4), enc.encode_f64(np.linspace(0, 1e-3, 27)),
        encode_control(POLL, np.arange(19) % 3 == 0), encode_control(HAVE, np.zeros(0, bool)),
        enc.encode_uvarints(np.array([0, 1, 127, 128, 300, 16383, 16384, 2**35, 2**63 - 1])),
        enc.encode_sparse_indices(flat), enc.encode_packed(np.arange(-8, 8), 4, signed=True),
        enc.encode_packed(np.arange(0, 1024, 7), 10, signed=False), enc.zigzag_encode(counts).tobytes(),
        enc.quantize(np.linspace(-1, 1, 33), 1 / 7, 4, signed=True).tobytes(),
    ]
    # decode and re-encode: a decoder that changed its result changes these bytes
    idx, cnt, tag, tk = m.decode_pulse_request(parts[8], version=2)
    vreq = m.decode_vmm_request(parts[15], 6)
    pidx, targets, tol, max_iter, per_round = m.decode_program_request(parts[18])
    fidx, v, w, icc = m.decode_form_request(parts[21])
    iidx, volts, step, iicc = m.decode_iv_request(parts[23])
    parts += [
        m.encode_pulse_request(idx, cnt, tag, tk, version=2), m.encode_vmm_request(vreq, 6),
        m.encode_program_request(pidx, targets, tol, max_iter, per_round), m.encode_form_request(fidx, v, w, icc),
        m.encode_iv_request(iidx, volts, step, iicc),
        m.encode_vmm_result(m.decode_vmm_result(parts[17], 3, 11, 10), 10),
        m.encode_program_result(*m.decode_program_result(parts[19], flat.size)[:3],
                                *m.decode_program_result(parts[19], flat.size)[3:]),
        m.encode_form_result(*m.decode_form_result(parts[22], flat.size)),
    ]
    # whole messages: framing, chunking, flags and session fields
    frames = [
        encode_frame(Frame(5, FLAG_AFTER_PREVIOUS, 2**32 - 1, Op.PULSE, 0, 0, 1, parts[8][:100], 0xFFFFFFFF)),
        encode_frame(Frame(2, 0x03, 7, Op.VMM, Status.LIMIT_VIOLATION, 2, 3, b"\x00" * 300)),
    ]
    return b"".join(len(p).to_bytes(4, "little") + p for p in parts + frames)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_conversation_with_the_firmware_has_the_pinned_wire_bytes():
    up, down = _conversation()
    assert _conversation() == (up, down)  # deterministic: the same bytes on a second run
    assert {"up": len(up), "down": len(down)} == CONVERSATION_BYTES
    assert {"up": _sha(up), "down": _sha(down)} == CONVERSATION_SHA256


def test_the_payload_codec_has_the_pinned_bytes():
    data = _codec_transcript()
    assert len(data) == CODEC_BYTES
    assert _sha(data) == CODEC_SHA256


def test_the_conversation_covers_every_opcode_status_and_flag():
    """The pinned conversation is worth pinning: every opcode and status, in every version, both ways."""
    up, down = _conversation()
    sent, got = FrameDecoder().feed(up), FrameDecoder().feed(down)
    assert {f.opcode for f in sent} >= set(Op) | {0x99}
    assert {f.status for f in got} >= {s for s in Status if s not in (Status.UNSUPPORTED, Status.INTERNAL)}
    assert {f.version for f in sent} == {1, 2, 3, 4, 5} and {f.version for f in got} == {1, 2, 3, 4, 5}
    assert any(f.flags & FLAG_AFTER_PREVIOUS for f in sent)
    assert any(f.chunk_count > 1 for f in sent) and any(f.chunk_count > 1 for f in got)
    assert any(f.is_control for f in sent) and any(f.is_control for f in got)
    assert any(f.flags & 0x02 for f in sent)  # a whole-message retransmission (version 2)
