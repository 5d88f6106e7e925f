"""The serial FPGA controller as a Board: protocol requests over a byte link, with retries.

Used for real controllers (a serial port), for the firmware emulator served on a
pseudo-terminal or TCP, and -- through :class:`~drivers.links.InProcessLink` -- for
the in-process emulator.  All three go through the same codec and session layer.

Retries (protocol version 3): the host opens a session (HELLO) and sends each request
as chunks.  When the line falls silent before the reply is complete, it polls the
board with the bitmap of reply chunks it holds; the board resends only the missing
reply chunks, or asks for the missing request chunks (see :mod:`protocols.session`).
The firmware executes each request once.  A request fails with
:class:`~drivers.errors.BoardTimeout` after ``retries + 1`` consecutive silent waits
without any progress (while no reply chunk has come, each twice as long as the one
before, up to four times the timeout), or after a hard cap of rounds; the message says what the link showed.
A board that speaks only version 2 or 1 is spoken to in that version (whole resends).

Pipelining (protocol version 5): up to the window negotiated in HELLO of requests are in
flight at once; :meth:`FpgaBoard._submit` sends without waiting and returns a handle, the
synchronous ``_transact`` is submit-then-wait, and :meth:`Board.pulse_async` uses it so that
a training step's pulse batch overlaps the next forward VMM.  Replies are matched by
sequence number; a request that fails gives up every one in flight after it.

One module of about 460 lines on purpose: every ``_do_*`` hook is a few lines over the one
link, session and window state, which would otherwise be passed between modules.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from drivers.board import Board, BoardInfo, BoardStatus, Capabilities, Pending, ProgramReport, PulseReport, Region
from drivers.errors import BoardError, BoardTimeout, InstrumentError, LimitViolation, LinkError, ProtocolError
from drivers.limits import REL_TOL, PulseProfile, SafetyLimits
from drivers.links import Link
from protocols import encoding as enc
from protocols import messages as m
from protocols.framing import PACKED_CODES_VERSION, PROTOCOL_VERSION, SESSION_VERSION
from protocols.messages import Op, Status
from protocols.session import CHUNK_BYTES, DEFAULT_WINDOW, ClientSession, LegacyClientSession

log = logging.getLogger(__name__)

_STATUS_ERRORS: dict[int, type[BoardError]] = {
    Status.LIMIT_VIOLATION: LimitViolation,
    Status.BAD_REQUEST: ProtocolError,
    Status.UNKNOWN_OPCODE: ProtocolError,
    Status.VERSION_MISMATCH: ProtocolError,
    Status.UNSUPPORTED: InstrumentError,
    Status.BUSY: InstrumentError,
    Status.INTERNAL: InstrumentError,
}


class FpgaBoard(Board):
    """A Board that speaks the FPGA wire protocol over ``link``."""

    MAX_ROUNDS_PER_RETRY = 8
    """Hard cap: a request gives up after (retries + 1) * this many poll rounds, progress or not."""

    def __init__(self, link: Link, limits: SafetyLimits | None = None, timeout_sec: float = 2.0,
                 retries: int = 5, address: str = "", chunk_bytes: int = CHUNK_BYTES, window: int = DEFAULT_WINDOW):
        super().__init__(limits, address=address)
        self._link = link
        self.chunk_bytes = chunk_bytes
        self.asked_window = window
        self._session: ClientSession | LegacyClientSession = ClientSession(chunk_bytes=chunk_bytes, window=window)
        self._inflight: OrderedDict[int, _InFlight] = OrderedDict()
        """Requests sent whose reply has not been taken, oldest first."""
        self._failed: list[_InFlight] = []
        """Requests that failed since the last waiting call, so a failure nobody waited for is raised there."""
        self.timeout_sec = timeout_sec
        self.retries = retries
        self.retransmissions = 0
        try:
            hello = self._hello()
            self._info = _board_info(hello)
            self._max_payload = int(hello.get("max_payload", 16384))
            self._resolve_limits()  # a user limits file that conflicts with the hardware fails here
        except BaseException:
            link.close()
            raise
        self._profiles_on_board = False

    def _hello(self) -> dict:
        """HELLO in this codec's protocol version, opening a session; a board that refuses it with
        VERSION_MISMATCH is spoken to in the next older version (2: no sessions, whole resends;
        1: also no partial pulses)."""
        for version in range(PROTOCOL_VERSION, 0, -1):
            if version < PROTOCOL_VERSION:
                log.info("the board does not speak protocol version %d: falling back to version %d",
                         version + 1, version)
                # a legacy board replays its last reply to a request of the same seq: the refused HELLO's seq must
                # not be reused, or the older version's HELLO is answered with the newer one's refusal
                self._session = (ClientSession(chunk_bytes=self.chunk_bytes, version=version, window=self.asked_window)
                                 if version >= SESSION_VERSION
                                 else LegacyClientSession(first_seq=self._session.seq + 1, version=version))
            try:
                hello = m.HelloReply.decode(self._transact(Op.HELLO, self._session.hello_payload())).fields
                self._session.grant(int(hello.get("max_in_flight", 1)))  # boards before version 5: one at a time
                return hello
            except ProtocolError as exc:
                if "VERSION_MISMATCH" not in str(exc) or version == 1:
                    raise
        raise AssertionError("unreachable")

    @property
    def protocol_version(self) -> int:
        """The protocol version this board is spoken to in."""
        return self._session.version

    @property
    def window(self) -> int:
        """Requests this board may have in flight at once (1 before protocol version 5)."""
        return self._session.window

    def _sync_profiles(self) -> None:
        """Send the host's profiles before the first write, so both ends agree after a reconnect.

        Lazy, so that opening a board under limits that forbid the default profiles works.
        """
        if not self._profiles_on_board:
            self._do_set_profiles(*self._profiles)

    # ---- transport ------------------------------------------------------------------------
    def _submit(self, opcode: Op, payload: bytes = b"", extra_sec: float = 0.0,
                decode: Callable[[bytes], Any] | None = None) -> "_InFlight":
        """Send a request without waiting for its reply (after waiting for the oldest ones while the
        window is full); ``decode`` turns its reply payload into the handle's result."""
        session = self._session
        while session.window_full:
            self._settle_oldest()
        health0, rx0 = session.health(), self._link.bytes_rx
        wire = session.request(opcode, payload)
        handle = _InFlight(self, session.seq, opcode, extra_sec, decode, health0, rx0)
        self._inflight[handle.seq] = handle
        try:
            self._link.write(wire)
        except LinkError as exc:
            self._give_up(handle, exc)
            handle.observed = True
            raise
        return handle

    def _finish(self, handle: "_InFlight") -> Any:
        """Wait for ``handle``; an earlier request sent without waiting that failed unobserved is raised first."""
        while not handle.done:
            self._settle_oldest()
        failed = [h for h in self._failed if not h.observed and h is not handle]
        self._failed.clear()
        if failed:
            failed[0].observed = True
            failed[0].result()
        return handle.result()

    def _transact(self, opcode: Op, payload: bytes = b"", extra_sec: float = 0.0) -> bytes:
        return self._finish(self._submit(opcode, payload, extra_sec))

    @property
    def _layout(self) -> m.Layout:
        """The payload layout this board is spoken to in (converter widths known after HELLO)."""
        info = getattr(self, "_info", None)
        if info is None:
            return m.Layout(self.protocol_version)
        return m.Layout.for_converters(self.protocol_version, info.dac_bits, info.adc_bits)

    def _send(self, request, extra_sec: float = 0.0, then: Callable[[Any], Any] | None = None) -> "_InFlight":
        """Submit a request dataclass; the handle's result is its reply dataclass (through ``then``, if given)."""
        layout = self._layout

        def decode(payload: bytes) -> Any:
            reply = m.decode_reply(request, payload, layout)
            return then(reply) if then else reply

        return self._submit(request.OP, request.encode(layout), extra_sec, decode)

    def _call(self, request, extra_sec: float = 0.0) -> Any:
        """Send a request dataclass and wait for its reply dataclass (through :meth:`_transact`)."""
        layout = self._layout
        return m.decode_reply(request, self._transact(request.OP, request.encode(layout), extra_sec), layout)

    def _settle_oldest(self) -> None:
        """Wait until the oldest request in flight is answered, polling for every request in flight after
        silence; when it fails, give up every request in flight (their outcome is unknown)."""
        handle = next(iter(self._inflight.values()))
        session = self._session
        base_sec = self.timeout_sec + handle.extra_sec
        wait_sec, idle, rounds = base_sec, 0, 0
        while not handle.done:
            progress = session.progress
            self._read_replies(wait_sec, handle)
            if handle.done:
                return
            if session.reply_started_for(handle.seq):
                base_sec = self.timeout_sec  # the board has executed it: no more time for the operation itself
            if session.progress != progress:
                idle, wait_sec = 0, base_sec
            else:
                idle += 1
                # before the reply starts the board may still be busy: back off so polls do not pile up
                wait_sec = base_sec if session.reply_started_for(handle.seq) else min(2 * wait_sec, 4 * base_sec)
            rounds += 1
            if idle > self.retries or rounds >= (self.retries + 1) * self.MAX_ROUNDS_PER_RETRY:
                self._give_up(handle, BoardTimeout(self._timeout_message(handle, rounds, idle)))
                return
            self.retransmissions += 1
            log.info("no complete reply to %s (seq %d) after %.2g s; poll %d (%d without progress, %d in flight)",
                     handle.opcode.name, handle.seq, wait_sec, rounds, idle, session.in_flight)
            self._link.write(session.poll_all())

    def _give_up(self, handle: "_InFlight", error: BoardError) -> None:
        self._session.abandon()
        for other in self._inflight.values():
            if other is not handle:
                other.resolve(error=BoardTimeout(f"{other.opcode.name} (seq {other.seq}) was given up because "
                                                 f"the request before it failed: {error}"))
        self._inflight.clear()
        handle.resolve(error=error)
        self._failed.append(handle)

    def _timeout_message(self, handle: "_InFlight", rounds: int, idle: int) -> str:
        s = self._session
        seen = s.health().minus(handle.health0)
        bytes_rx = self._link.bytes_rx - handle.rx0
        why = "without progress" if idle > self.retries else "(the cap of rounds per request)"
        return (f"the board at {self.address or 'the link'} did not answer {handle.opcode.name} (seq {handle.seq}, "
                f"{s.pending_chunks} request chunk(s)) completely after {rounds} polls {why}, waiting "
                f"{self.timeout_sec:.2g} s and longer: {seen.describe(bytes_rx)}")

    def _read_replies(self, timeout_sec: float, handle: "_InFlight") -> None:
        """Read until ``handle`` is answered or the line has been silent (no progress) for ``timeout_sec``;
        replies to other requests in flight are taken on the way."""
        session = self._session
        deadline = time.monotonic() + timeout_sec
        progress = session.progress
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            data = self._link.read(min(remaining, 0.25))
            if not data:
                continue
            if session.feed(data):
                self._collect()
                if handle.done:
                    return
            out = session.take_outbox()
            if out:
                self._link.write(out)
            if session.progress != progress:  # chunks are coming in or being acknowledged: keep waiting
                progress = session.progress
                deadline = time.monotonic() + timeout_sec

    def _collect(self) -> None:
        """Resolve every request in flight whose reply is complete."""
        for seq, handle in list(self._inflight.items()):
            reply = self._session.take_reply(seq)
            if reply is None:
                continue
            del self._inflight[seq]
            try:
                payload = self._check_status(handle.opcode, reply)
                handle.resolve(handle.decode(payload) if handle.decode else payload)
            except Exception as exc:  # a refusal, or a reply that does not decode: the caller's error
                handle.resolve(error=exc)
                self._failed.append(handle)

    def _check_status(self, opcode: Op, reply) -> bytes:
        if reply.status == Status.OK:
            return reply.payload
        text = m.ErrorReply.decode(reply.payload).text
        cls = _STATUS_ERRORS.get(reply.status, InstrumentError)
        msg = f"board refused {opcode.name}: {text} ({m.status_name(reply.status)})"
        if cls is InstrumentError:
            raise InstrumentError(msg, code=reply.status)
        raise cls(msg)

    @property
    def wire_bytes(self) -> int:
        return self._link.bytes_tx + self._link.bytes_rx

    @property
    def link(self) -> Link:
        return self._link

    # ---- Board hooks ----------------------------------------------------------------------
    @property
    def info(self) -> BoardInfo:
        return self._info

    def _do_set_profiles(self, set_profile: PulseProfile, reset_profile: PulseProfile) -> None:
        self._call(m.SetProfilesRequest(set_profile.amplitude_v, set_profile.width_sec,
                                        reset_profile.amplitude_v, reset_profile.width_sec))
        self._profiles_on_board = True

    def _codes_to_g(self, codes: np.ndarray) -> np.ndarray:
        return codes.astype(np.float64) * self._info.g_lsb_s

    def _do_read_region(self, region: Region) -> np.ndarray:
        reply = self._call(m.ReadRegionRequest(region.row0, region.col0, region.rows, region.cols),
                           extra_sec=region.size * 2e-6)
        return self._codes_to_g(reply.codes).reshape(region.rows, region.cols)

    def _do_read_cells(self, flat_sorted: np.ndarray) -> np.ndarray:
        reply = self._call(m.ReadCellsRequest(flat_sorted), extra_sec=flat_sorted.size * 2e-6)
        return self._codes_to_g(reply.codes)

    def _do_vmm(self, region: Region, v: np.ndarray, transpose: bool, i_full_scale_a: float) -> np.ndarray:
        info = self._info
        dac_max = 2 ** (info.dac_bits - 1) - 1
        adc_max = 2 ** (info.adc_bits - 1) - 1
        lsb = info.dac_full_scale_v / dac_max
        codes = enc.quantize(v, lsb, info.dac_bits, signed=True).astype(np.int64)
        top = min(dac_max, int(np.floor(self.limits.max_read_v / lsb * (1 + REL_TOL))))  # rounding never exceeds it
        codes = np.clip(codes, -top, top)
        packed = self.protocol_version >= PACKED_CODES_VERSION
        if not packed:
            codes = codes.astype(np.int8)
        req = m.VmmRequest(region.row0, region.col0, region.rows, region.cols, transpose, codes, i_full_scale_a)
        out = self._call(req, extra_sec=v.shape[0] * 1e-5).codes
        return out.astype(np.float64) * (i_full_scale_a / adc_max)

    def _width_ticks(self, counts: np.ndarray, last_width_sec: np.ndarray | None) -> np.ndarray | None:
        """Last-pulse widths in timing ticks (0 = full profile width), or None when all are full."""
        if last_width_sec is None:
            return None
        res = self._info.timing_resolution_sec
        profile_w = np.where(counts > 0, self._profiles[0].width_sec, self._profiles[1].width_sec)
        ticks = np.rint(last_width_sec / res).astype(np.int64)
        ticks[ticks >= np.rint(profile_w / res)] = 0  # a full-width last pulse is an ordinary pulse
        if not ticks.any():
            return None
        made = ticks[ticks > 0] * res
        if made.min() < self.limits.min_pulse_width_sec * (1 - 1e-9):
            raise LimitViolation(f"a {made.min():.3g} s pulse (a width on this board's {res:.3g} s timing grid) is "
                                 f"shorter than min_pulse_width_sec = {self.limits.min_pulse_width_sec:.3g} s")
        if self.protocol_version < 2:
            raise BoardError("this board speaks protocol version 1, which has no pulse widths: it cannot make "
                             "partial pulses (use --method bp-pulses, or update its firmware)")
        return ticks

    def _do_pulse(self, flat_sorted: np.ndarray, counts: np.ndarray, tag: int = 0,
                  last_width_sec: np.ndarray | None = None) -> PulseReport:
        return self._finish(self._do_pulse_async(flat_sorted, counts, tag, last_width_sec))

    def _do_pulse_async(self, flat_sorted: np.ndarray, counts: np.ndarray, tag: int = 0,
                        last_width_sec: np.ndarray | None = None) -> "_InFlight":
        ticks = self._width_ticks(counts, last_width_sec)
        self._sync_profiles()
        return self._send(m.PulseRequest(flat_sorted, counts, tag, ticks),
                          extra_sec=float(np.abs(counts).sum()) * 1e-6, then=_pulse_report)

    def _do_program(self, flat: np.ndarray, targets_s: np.ndarray, tolerance_s: float, max_iter: int) -> ProgramReport:
        """Write-verify on the board.  Each round is one pulse batch of up to ``per_round`` pulses per device,
        so devices are programmed in groups small enough that a round respects max_pulses_per_batch."""
        self._sync_profiles()
        order = np.argsort(flat)
        flat_sorted, targets_sorted = flat[order], targets_s[order]
        lim = self.limits
        group = min(flat.size, lim.max_pulses_per_batch)
        parts = []
        for start in range(0, flat.size, group):
            sel = slice(start, start + group)
            n = flat_sorted[sel].size
            per_round = max(1, min(32, lim.max_pulses_per_device, lim.max_pulses_per_batch // n))
            codes = enc.quantize(targets_sorted[sel], self._info.g_lsb_s, 16, signed=False)
            parts.append(self._call(m.ProgramRequest(flat_sorted[sel], codes, tolerance_s, max_iter, per_round),
                                    extra_sec=n * max_iter * 1e-5))
        got = np.concatenate([p.achieved_codes for p in parts])
        conv = np.concatenate([p.converged for p in parts])
        iters = np.concatenate([p.iterations for p in parts])
        pulses = int(sum(p.pulses for p in parts))
        energy = float(sum(p.energy_j for p in parts))
        inv = np.empty_like(order)
        inv[order] = np.arange(order.size)
        return ProgramReport(self._codes_to_g(got)[inv], conv[inv], iters[inv], pulses, energy)

    def _do_form(self, flat: np.ndarray, voltage_v: float, width_sec: float, compliance_a: float):
        reply = self._call(m.FormRequest(flat, voltage_v, width_sec, compliance_a))
        return reply.formed, self._codes_to_g(reply.g_codes)

    def _do_iv_sweep(self, flat: np.ndarray, volts: np.ndarray, dwell_sec: float, compliance_a: float) -> np.ndarray:
        virtual = self._info.capabilities.virtual_clock
        return self._call(m.IvSweepRequest(flat, volts, dwell_sec, compliance_a),
                          extra_sec=0.0 if virtual else volts.size * dwell_sec * 1.5).currents_a

    def _do_clock(self) -> float:
        return self._call(m.ClockRequest()).clock_sec

    def _do_wait(self, seconds: float) -> float:
        virtual = self._info.capabilities.virtual_clock
        return self._call(m.WaitRequest(seconds), extra_sec=0.0 if virtual else seconds).clock_sec

    def _do_status(self, with_digest: bool = False) -> BoardStatus:
        data = self._call(m.StatusRequest(with_digest)).fields
        return BoardStatus(**{k: v for k, v in data.items() if k in BoardStatus.model_fields})

    def status(self, with_digest: bool = False) -> BoardStatus:
        """Running totals; ``with_digest`` adds the emulator's state hash (costly on big arrays)."""
        return self._do_status(with_digest)

    def _do_true_parameters(self) -> dict[str, Any]:
        return self._call(m.TrueParamsRequest()).fields

    def _do_snapshot(self) -> bytes:
        return self._transact(Op.SNAPSHOT, extra_sec=5.0)  # opaque to the host: kept and returned as bytes

    def _do_restore(self, blob: bytes) -> None:
        self._transact(Op.RESTORE, blob, extra_sec=5.0)  # the board checks the image (SnapshotImage)
        self._profiles_on_board = False  # the snapshot carried the board's profiles; resend ours

    def _do_safe_idle(self) -> None:
        self._call(m.SafeIdleRequest())

    def _do_close(self) -> None:
        self._link.close()


def _pulse_report(r: m.PulseResult) -> PulseReport:
    return PulseReport(devices=r.devices, set_pulses=r.set_pulses, reset_pulses=r.reset_pulses,
                       energy_j=r.energy_j, duration_sec=r.duration_sec, clock_sec=r.clock_sec)


class _InFlight(Pending):
    """A request sent to an :class:`FpgaBoard` whose reply may not have arrived: ``result()`` waits for it."""

    def __init__(self, board: FpgaBoard, seq: int, opcode: Op, extra_sec: float,
                 decode: Callable[[bytes], Any] | None, health0, rx0: int):
        super().__init__()
        self.board, self.seq, self.opcode, self.extra_sec, self.decode = board, seq, opcode, extra_sec, decode
        self.health0, self.rx0 = health0, rx0
        self._done = False
        self.observed = False

    @property
    def done(self) -> bool:
        return self._done

    def resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        self._value, self._error, self._done = value, error, True

    def result(self) -> Any:
        if not self._done:
            self.board._finish(self)
        self.observed = True
        return super().result()


def _board_info(hello: dict) -> BoardInfo:
    try:
        lim = hello["hardware_limits"]
        return BoardInfo(
            kind=hello["kind"], name=hello["name"], serial_number=hello["serial_number"],
            firmware_version=hello["firmware_version"], protocol_version=hello["protocol_version"],
            rows=hello["rows"], cols=hello["cols"],
            # the firmware keeps the last PULSE tag (PROTOCOL.md), whatever the host does; pulse widths came with
            # protocol version 2
            capabilities=Capabilities(**{**hello["capabilities"], "durable_pulse_tags": True,
                                         "partial_pulses": hello["protocol_version"] >= 2}),
            hardware_limits=SafetyLimits(**lim), read_voltage_v=hello["read_voltage_v"],
            g_lsb_s=hello["g_lsb_s"], g_full_scale_s=hello["g_full_scale_s"], dac_bits=hello["dac_bits"],
            dac_full_scale_v=hello["dac_full_scale_v"], adc_bits=hello["adc_bits"],
            adc_full_scale_a=tuple(hello["adc_full_scale_a"]), timing_resolution_sec=hello["timing_resolution_sec"],
            emulated=hello.get("emulated", False),
            device_preset=hello.get("device_preset"), device_config=hello.get("device_config"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"the board's HELLO reply is incomplete or invalid: {exc}") from None
