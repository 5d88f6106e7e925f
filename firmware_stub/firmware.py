"""The FPGA controller firmware, emulated: executes protocol requests on the array model.

:class:`Firmware` maps one decoded request to one reply (status + payload) and
enforces the board's own hardware limits again, whatever the host checked: a
request beyond them is answered with ``LIMIT_VIOLATION`` and changes nothing.
:class:`FirmwareEndpoint` puts the sans-I/O session layer (:class:`~protocols.session.SessionServer`
for versions 3 to 5, :class:`~protocols.session.LegacyServerSession` for versions 1 and 2) in front of it, so that bytes in give bytes out; the pty, TCP and in-process
transports all drive that one method.

Board time: the endpoint also keeps the bench's clock for the link.  Every executed
request that operates the array (:data:`TIMED_OPS`: pulses, programming, reads, VMM,
forming, sweeps, waits) advances the array's virtual clock by its frames' transfer time at
the link's nominal rate (``DeviceParams.link_baud``, ``link_bits_per_byte`` symbols per
byte), by the per-command latency ``t_link_turnaround_sec``, and, once executed, by its
reply's transfer time; the operation itself books its own duration in the array model.
Frame sizes are the nominal ones of the message (COBS worst case, one frame per chunk),
so the clock does not depend on the transport: in-process, pty and TCP give the same
board time.  Housekeeping (HELLO, STATUS, CLOCK, SET_PROFILES, SAFE_IDLE) and the
emulator-only commands (SNAPSHOT, RESTORE, TRUE_PARAMS) cost no board time, and neither
do replayed replies to retransmitted requests nor line noise: so the clock is the same
whether or not a run was checkpointed, interrupted and resumed, and under link faults.

One module of about 470 lines on purpose: the opcode handlers and the endpoint that books
their board time stay side by side, so the clock rule is read next to what it times.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import asdict, dataclass

import numpy as np

from firmware_stub.array_model import MemristorArray
from firmware_stub.device_params import DeviceParams
from firmware_stub.program_verify import write_verify
from protocols import encoding as enc
from protocols import messages as m
from protocols.framing import (
    CRC,
    HEADER,
    MAX_PAYLOAD,
    PIPELINE_VERSION,
    PROTOCOL_VERSION,
    SESSION,
    SUPPORTED_VERSIONS,
    FrameDecoder,
)
from protocols.messages import Op, Status
from protocols.session import (
    CHUNK_BYTES,
    MAX_IN_FLIGHT,
    MAX_MESSAGE_BYTES,
    LegacyServerSession,
    SessionServer,
)

log = logging.getLogger(__name__)

FIRMWARE_VERSION = "emu-1.2.0"
TIMING_RESOLUTION_SEC = 100e-12
"""Pulse-timer tick: every pulse width is a whole number of ticks, from one tick up.

100 ps (a serialiser-driven pulse generator) lets the ``bp`` baseline write nearly every
non-zero update as asked: its typical request is a few per cent of a 50 ns pulse's step.
"""


@dataclass(frozen=True)
class HardwareLimits:
    """What the emulated board itself refuses to exceed (field names as the host's SafetyLimits)."""

    max_set_v: float = 3.0
    max_reset_v: float = 3.0
    max_read_v: float = 0.5
    max_form_v: float = 4.0
    compliance_a: float = 1e-3
    min_pulse_width_sec: float = 100e-12  # one tick of the pulse timer (see TIMING_RESOLUTION_SEC)
    max_pulse_width_sec: float = 1e-3
    max_pulses_per_batch: int = 64_000_000
    max_pulses_per_device: int = 255


TIMED_OPS = frozenset({Op.PULSE, Op.PROGRAM, Op.READ_REGION, Op.READ_CELLS, Op.VMM, Op.FORM, Op.IV_SWEEP, Op.WAIT})
"""Requests whose frames and latency pass on the board clock (see the module docstring)."""


def emulator_serial(array: MemristorArray) -> str:
    """``EMU-<rows>x<cols>-seed<seed>``, plus ``-p<digest>`` of the device parameters unless they are the defaults:
    two emulators that are different boards (seed, size or preset) never share a serial number."""
    serial = f"EMU-{array.rows}x{array.cols}-seed{array.seed}"
    if array.params != DeviceParams():
        serial += "-p" + hashlib.sha256(array.params.model_dump_json().encode()).hexdigest()[:8]
    return serial


class Refused(Exception):
    def __init__(self, status: Status, message: str):
        super().__init__(message)
        self.status = status


class Firmware:
    """Executes requests on one :class:`MemristorArray`."""

    def __init__(self, array: MemristorArray, limits: HardwareLimits | None = None,
                 name: str = "memristor-array-emulator", serial_number: str | None = None,
                 device_preset: str = "default", device_config: str | None = None):
        self.array = array
        self.params: DeviceParams = array.params
        self.limits = limits or HardwareLimits()
        self.name = name
        self.device_preset = device_preset
        self.device_config = device_config
        self.serial_number = serial_number or emulator_serial(array)
        p = self.params
        self.g_full_scale_s = 2.0 * p.g_max_s
        self.g_lsb_s = self.g_full_scale_s / 65535
        self.dac_full_scale_v = min(p.read_voltage_v, self.limits.max_read_v)
        self.dac_max_code = 2 ** (p.dac_bits - 1) - 1
        self.adc_max_code = 2 ** (p.adc_bits - 1) - 1
        self.adc_range_a = (1e-6, 1e-2)
        self.profiles = ((p.v_set_nominal_v, p.width_nominal_sec), (p.v_reset_nominal_v, p.width_nominal_sec))
        self.idle = True
        self.last_pulse_tag = 0
        self.timing_resolution_sec = TIMING_RESOLUTION_SEC
        self.supported_versions: tuple[int, ...] = SUPPORTED_VERSIONS  # narrowed to act as an older firmware
        self._handlers = {
            Op.HELLO: self._hello,
            Op.STATUS: self._status,
            Op.SET_PROFILES: self._set_profiles,
            Op.PULSE: self._pulse,
            Op.READ_REGION: self._read_region,
            Op.READ_CELLS: self._read_cells,
            Op.VMM: self._vmm,
            Op.PROGRAM: self._program,
            Op.CLOCK: self._clock,
            Op.WAIT: self._wait,
            Op.SAFE_IDLE: self._safe_idle,
            Op.TRUE_PARAMS: self._true_params,
            Op.FORM: self._form,
            Op.IV_SWEEP: self._iv_sweep,
            Op.SNAPSHOT: self._snapshot,
            Op.RESTORE: self._restore,
        }

    # ---- dispatch ------------------------------------------------------------------
    def handle(self, opcode: int, payload: bytes, version: int = PROTOCOL_VERSION) -> tuple[Status, bytes]:
        """One request of protocol ``version`` (the frame's) -> (status, reply payload)."""
        handler = self._handlers.get(opcode)  # type: ignore[call-overload]
        if version not in self.supported_versions:
            return Status.VERSION_MISMATCH, m.ErrorReply(f"protocol version {version} is not supported").encode()
        if handler is None:
            return Status.UNKNOWN_OPCODE, m.ErrorReply(f"unknown opcode 0x{opcode:02x}").encode()
        layout = m.Layout.for_converters(version, self.params.dac_bits, self.params.adc_bits)
        try:
            return Status.OK, handler(m.REQUESTS[opcode].decode(payload, layout)).encode(layout)
        except Refused as exc:
            return exc.status, m.ErrorReply(str(exc)).encode()
        except (m.PayloadError, ValueError) as exc:
            return Status.BAD_REQUEST, m.ErrorReply(str(exc)).encode()
        except Exception as exc:  # the firmware must answer, whatever went wrong
            log.exception("firmware fault on opcode 0x%02x", opcode)
            return Status.INTERNAL, m.ErrorReply(f"internal firmware error: {exc!r}").encode()

    # ---- identity and status ------------------------------------------------------------
    def info(self) -> dict:
        p = self.params
        return {
            "kind": "emulator",
            "name": self.name,
            "serial_number": self.serial_number,
            "firmware_version": FIRMWARE_VERSION,
            "protocol_version": max(self.supported_versions),
            "rows": self.array.rows,
            "cols": self.array.cols,
            "capabilities": {"vmm": True, "vmm_transpose": True, "write_verify": True,
                             "virtual_clock": True, "true_parameters": True, "snapshot": True,
                             "iv_sweep": True, "forming": True},
            "hardware_limits": asdict(self.limits),
            "read_voltage_v": p.read_voltage_v,
            "g_lsb_s": self.g_lsb_s,
            "g_full_scale_s": self.g_full_scale_s,
            "dac_bits": p.dac_bits,
            "dac_full_scale_v": self.dac_full_scale_v,
            "adc_bits": p.adc_bits,
            "adc_full_scale_a": list(self.adc_range_a),
            "timing_resolution_sec": self.timing_resolution_sec,
            "protocol_versions": list(self.supported_versions),
            "emulated": True,
            "device_preset": self.device_preset,
            "device_config": self.device_config,
            "link_baud": p.link_baud,
            "max_payload": MAX_PAYLOAD,
            "chunk_bytes_default": CHUNK_BYTES,
            "max_message_bytes": MAX_MESSAGE_BYTES,
        }

    def _hello(self, req: m.HelloRequest) -> m.HelloReply:
        info = self.info()
        if max(self.supported_versions) >= PIPELINE_VERSION:
            info["max_in_flight"] = MAX_IN_FLIGHT  # the session layer grants min(this, the host's ask)
        return m.HelloReply(info)

    def status(self, with_digest: bool = False) -> dict:
        return {**self.array.totals(with_digest), "idle": self.idle, "last_pulse_tag": self.last_pulse_tag}

    def _status(self, req: m.StatusRequest) -> m.StatusReply:
        return m.StatusReply(self.status(with_digest=req.with_digest))

    def _true_params(self, req: m.TrueParamsRequest) -> m.TrueParamsReply:
        return m.TrueParamsReply(self.array.true_parameters())

    def _snapshot(self, req: m.SnapshotRequest) -> m.SnapshotImage:
        return m.SnapshotImage({"last_pulse_tag": self.last_pulse_tag, "profiles": self.profiles},
                               self.array.snapshot())

    def _restore(self, req: m.SnapshotImage) -> m.EmptyReply:
        try:
            self.array.restore(req.state)
        except ValueError as exc:
            raise Refused(Status.BAD_REQUEST, f"RESTORE: {exc}") from None
        self.last_pulse_tag = int(req.meta["last_pulse_tag"])
        self.profiles = tuple(tuple(p) for p in req.meta["profiles"])
        return m.EmptyReply()

    # ---- writes --------------------------------------------------------------------
    def _check_profile_limits(self, v: float, w: float, polarity: int) -> None:
        lim = self.limits
        if polarity > 0 and not 0 < v <= lim.max_set_v:
            raise Refused(Status.LIMIT_VIOLATION, f"SET amplitude {v:+.3f} V outside (0, {lim.max_set_v}] V")
        if polarity < 0 and not -lim.max_reset_v <= v < 0:
            raise Refused(Status.LIMIT_VIOLATION, f"RESET amplitude {v:+.3f} V outside [-{lim.max_reset_v}, 0) V")
        if not lim.min_pulse_width_sec <= w <= lim.max_pulse_width_sec:
            raise Refused(Status.LIMIT_VIOLATION, f"pulse width {w:.3g} s outside "
                                                  f"[{lim.min_pulse_width_sec:.3g}, {lim.max_pulse_width_sec:.3g}] s")

    def _set_profiles(self, req: m.SetProfilesRequest) -> m.EmptyReply:
        sv, sw, rv, rw = req.set_v, req.set_width_sec, req.reset_v, req.reset_width_sec
        self._check_profile_limits(sv, sw, +1)
        self._check_profile_limits(rv, rw, -1)
        self.profiles = ((sv, sw), (rv, rw))
        return m.EmptyReply()

    def _check_cells(self, flat: np.ndarray) -> None:
        if flat.size and (flat[0] < 0 or flat[-1] >= self.array.rows * self.array.cols):
            raise Refused(Status.BAD_REQUEST, f"cell index outside the {self.array.rows}x{self.array.cols} array")

    def _last_widths(self, counts: np.ndarray, ticks: np.ndarray | None) -> np.ndarray | None:
        """Width (s) of each device's last pulse from its ticks (0 = full), checked; None if all full."""
        if ticks is None or not ticks.any():
            return None
        profile_w = np.where(counts > 0, self.profiles[0][1], self.profiles[1][1])
        partial = ticks != 0
        w = np.where(partial, ticks * self.timing_resolution_sec, profile_w)
        lim = self.limits
        wp = w[partial]
        if wp.min() < lim.min_pulse_width_sec * (1 - 1e-9) or wp.max() > lim.max_pulse_width_sec * (1 + 1e-9):
            raise Refused(Status.LIMIT_VIOLATION, f"pulse widths from {wp.min():.3g} s to {wp.max():.3g} s outside "
                                                  f"[{lim.min_pulse_width_sec:.3g}, {lim.max_pulse_width_sec:.3g}] s")
        if np.any(w > profile_w * (1 + 1e-9)):
            raise Refused(Status.LIMIT_VIOLATION, "a last-pulse width exceeds its profile's width")
        return w

    def _pulse(self, req: m.PulseRequest) -> m.PulseResult:
        flat, counts, tag, ticks = req.flat_idx, req.counts, req.tag, req.last_width_ticks
        self._check_cells(flat)
        if counts.size:
            mags = np.abs(counts)
            if np.any(mags == 0):
                raise Refused(Status.BAD_REQUEST, "pulse batch holds a zero count")
            if mags.max() > self.limits.max_pulses_per_device:
                raise Refused(Status.LIMIT_VIOLATION, f"{int(mags.max())} pulses for one device exceed the "
                                                      f"limit of {self.limits.max_pulses_per_device}")
            if mags.sum() > self.limits.max_pulses_per_batch:
                raise Refused(Status.LIMIT_VIOLATION, "too many pulses in one batch")
        for (v, w), pol in zip(self.profiles, (+1, -1)):
            self._check_profile_limits(v, w, pol)
        last_w = self._last_widths(counts, ticks)
        self.idle = False
        out = self.array.apply_pulses(flat, counts, self.profiles[0], self.profiles[1], last_width_sec=last_w)
        if tag:
            self.last_pulse_tag = tag
        self.idle = True
        return m.PulseResult(int(flat.size), int(out.set_pulses), int(out.reset_pulses), float(out.energy_j),
                             float(out.duration_sec), self.array.clock_sec)

    def _program(self, req: m.ProgramRequest) -> m.ProgramReply:
        flat, target_codes, tol = req.flat_idx, req.target_codes, req.tolerance_s
        max_iter, per_round = req.max_iter, req.max_pulses_per_round
        self._check_cells(flat)
        if not (np.isfinite(tol) and tol > 0) or not 1 <= max_iter <= 1000 or per_round < 1:
            raise Refused(Status.BAD_REQUEST, "PROGRAM: tolerance must be > 0, max_iter in 1..1000 and "
                                              "max_pulses_per_round >= 1")
        lim = self.limits  # a round is one pulse batch: it obeys the batch limits too
        per_round = min(per_round, lim.max_pulses_per_device, max(1, lim.max_pulses_per_batch // max(flat.size, 1)))
        for (v, w), pol in zip(self.profiles, (+1, -1)):
            self._check_profile_limits(v, w, pol)
        self.idle = False
        cells_before = self.array.counters.cells_read_total
        achieved, conv, iters, pulses, energy = write_verify(
            self.array, flat, target_codes.astype(float) * self.g_lsb_s, tol, max_iter,
            self.profiles[0], self.profiles[1], max_pulses_per_iter=per_round,
        )
        self.array.account_conversions(self.array.counters.cells_read_total - cells_before)  # verify reads
        self.idle = True
        return m.ProgramReply(self._g_codes(achieved), conv, iters, pulses, energy)

    def _check_compliance(self, icc: float) -> None:
        if not (np.isfinite(icc) and 0 < icc <= self.limits.compliance_a):
            raise Refused(Status.LIMIT_VIOLATION, f"compliance {icc:.3g} A outside (0, {self.limits.compliance_a:.3g}] A")

    def _check_width(self, w: float) -> None:
        lim = self.limits
        if not (np.isfinite(w) and lim.min_pulse_width_sec <= w <= lim.max_pulse_width_sec):
            raise Refused(Status.LIMIT_VIOLATION, f"duration {w:.3g} s outside "
                                                  f"[{lim.min_pulse_width_sec:.3g}, {lim.max_pulse_width_sec:.3g}] s")

    def _form(self, req: m.FormRequest) -> m.FormReply:
        flat, v, w, icc = req.flat_idx, req.voltage_v, req.width_sec, req.compliance_a
        self._check_cells(flat)
        if not (np.isfinite(v) and 0 < v <= self.limits.max_form_v):
            raise Refused(Status.LIMIT_VIOLATION, f"forming voltage {v:.3f} V outside (0, {self.limits.max_form_v}] V")
        self._check_width(w)
        self._check_compliance(icc)
        formed = self.array.form(flat, v, w, icc)
        return m.FormReply(formed, self._read_codes(self.array.read_g(flat)))

    def _iv_sweep(self, req: m.IvSweepRequest) -> m.IvSweepReply:
        flat, volts, dwell, icc = req.flat_idx, req.voltages_v, req.dwell_sec, req.compliance_a
        self._check_cells(flat)
        lim = self.limits
        if volts.size and (not np.all(np.isfinite(volts)) or volts.max() > max(lim.max_set_v, lim.max_form_v)
                           or volts.min() < -lim.max_reset_v):
            raise Refused(Status.LIMIT_VIOLATION, "sweep voltage beyond the hardware limits")
        self._check_width(dwell)
        self._check_compliance(icc)
        self.idle = False
        cur = self.array.iv_sweep(flat, volts, dwell, icc)
        self.idle = True
        return m.IvSweepReply(cur)

    # ---- reads ---------------------------------------------------------------------
    def _g_codes(self, g: np.ndarray) -> np.ndarray:
        return enc.quantize(g, self.g_lsb_s, 16, signed=False)

    def _read_codes(self, g: np.ndarray) -> np.ndarray:
        """Codes of freshly read cells: one ADC conversion each."""
        self.array.account_conversions(g.size)
        return self._g_codes(g)

    def _region(self, r0: int, c0: int, nr: int, nc: int) -> None:
        if nr <= 0 or nc <= 0 or r0 + nr > self.array.rows or c0 + nc > self.array.cols:
            raise Refused(Status.BAD_REQUEST, f"region ({r0},{c0}) size {nr}x{nc} outside the "
                                              f"{self.array.rows}x{self.array.cols} array")

    def _read_region(self, req: m.ReadRegionRequest) -> m.CodesReply:
        r0, c0, nr, nc = req.row0, req.col0, req.rows, req.cols
        self._region(r0, c0, nr, nc)
        return m.CodesReply(self._read_codes(self.array.read_region(r0, c0, nr, nc).reshape(-1)))

    def _read_cells(self, req: m.ReadCellsRequest) -> m.CodesReply:
        self._check_cells(req.flat_idx)
        return m.CodesReply(self._read_codes(self.array.read_g(req.flat_idx)))

    def _vmm(self, r: m.VmmRequest) -> m.VmmReply:
        self._region(r.row0, r.col0, r.rows, r.cols)
        lo, hi = self.adc_range_a
        if not lo <= r.i_full_scale_a <= hi:
            raise Refused(Status.LIMIT_VIOLATION, f"ADC full scale {r.i_full_scale_a:.3g} A outside [{lo}, {hi}] A")
        if r.dac_codes.size and np.abs(r.dac_codes.astype(np.int64)).max() > self.dac_max_code:
            raise Refused(Status.LIMIT_VIOLATION, "DAC code beyond the converter range")
        v = r.dac_codes.astype(float) * (self.dac_full_scale_v / self.dac_max_code)
        i = self.array.vmm(r.row0, r.col0, r.rows, r.cols, v, r.transpose)
        self.array.account_conversions(i.size, dac=r.dac_codes.size)
        codes = enc.quantize(i, r.i_full_scale_a / self.adc_max_code, self.params.adc_bits, signed=True)
        return m.VmmReply(codes)

    # ---- time and idle ----------------------------------------------------------------
    def _clock(self, req: m.ClockRequest) -> m.ClockReply:
        return m.ClockReply(self.array.clock_sec)

    def _wait(self, req: m.WaitRequest) -> m.ClockReply:
        t = req.seconds
        if not (np.isfinite(t) and 0 <= t <= 1e9):
            raise Refused(Status.BAD_REQUEST, "WAIT: seconds must be in [0, 1e9]")
        self.array.advance(t)
        return m.ClockReply(self.array.clock_sec)

    def _safe_idle(self, req: m.SafeIdleRequest) -> m.EmptyReply:
        self.idle = True
        return m.EmptyReply()


def message_wire_bytes(payload_bytes: int, max_payload: int = MAX_PAYLOAD, session: bool = False) -> int:
    """Nominal bytes on the wire of one message: its leading delimiter and, per chunk of ``max_payload``,
    COBS(header | chunk | CRC) at its worst-case overhead (one byte in 254, plus one) and the delimiter.
    ``session``: version-3 frames, whose header carries the session id."""
    full, rest = divmod(int(payload_bytes), max_payload)
    chunks = [max_payload] * full + ([rest] if rest or not full else [])
    header = HEADER.size + (SESSION.size if session else 0)
    bodies = [header + n + CRC.size for n in chunks]
    return 1 + sum(b + b // 254 + 2 for b in bodies)


class FirmwareEndpoint:
    """Bytes in, bytes out: the session layer in front of the firmware, and the link's board time.  Thread-safe."""

    def __init__(self, firmware: Firmware):
        self.firmware = firmware
        self.sessions = SessionServer()
        """Version-3 hosts: sessions, chunk bitmaps, per-session replay cache."""
        self.legacy = LegacyServerSession()
        """Version-1/2 hosts: no session field, whole-message replays."""
        self._decoder = FrameDecoder()
        self._lock = threading.Lock()
        p = firmware.params
        self.byte_time_sec = p.link_bits_per_byte / p.link_baud

    @property
    def decoder(self) -> FrameDecoder:
        return self._decoder

    @property
    def reassembly_bytes(self) -> int:
        """Bytes of incomplete requests held (each session layer holds at most ``MAX_MESSAGE_BYTES``)."""
        return self.sessions.reassembly_bytes + self.legacy.reassembly_bytes

    def _transfer(self, payload_bytes: int, session: int | None) -> None:
        """Advance the board clock by one message's transfer time at the link's nominal rate."""
        if session is None:
            n = message_wire_bytes(payload_bytes)
        else:
            n = message_wire_bytes(payload_bytes, self.sessions.chunk_bytes(session), session=True)
        self.firmware.array.advance(n * self.byte_time_sec)

    def disconnect(self) -> None:
        """The host's connection ended: drop its half-received frame and request (their memory is freed)."""
        with self._lock:
            self._decoder = FrameDecoder()
            self.sessions.drop_incomplete()
            self.legacy.drop_incomplete()

    def receive(self, data: bytes) -> bytes:
        with self._lock:
            frames = self._decoder.feed(data)
            if not frames:
                return b""
            requests, out = self.sessions.receive_frames([f for f in frames if f.session is not None])
            old, replay = self.legacy.receive_frames([f for f in frames if f.session is None])
            if not requests and not old:
                return out + replay
            parts = [out, replay]
            array = self.firmware.array
            for req, layer in [(r, self.sessions) for r in requests] + [(r, self.legacy) for r in old]:
                timed = req.opcode in TIMED_OPS
                if timed:
                    self._transfer(len(req.payload), req.session)  # the request arrived ...
                    array.advance(self.firmware.params.t_link_turnaround_sec)  # ... and the link turned round
                status, payload = self.firmware.handle(req.opcode, req.payload, req.version)
                if status != Status.OK:
                    log.info("refused opcode 0x%02x seq %d: %s", req.opcode, req.seq, payload[:200])
                parts.append(layer.respond(req, status, payload))
                if timed:
                    self._transfer(len(payload), req.session)  # the reply leaves
            return b"".join(parts)


def make_emulator(rows: int = 128, cols: int = 128, seed: int = 0, params: DeviceParams | None = None,
                  *, preset: str = "default", config: str | None = None) -> FirmwareEndpoint:
    """An emulated board ready to serve: array model, firmware and session layer.

    ``preset`` and ``config`` only name where ``params`` came from (board identity); load the
    parameters with :func:`firmware_stub.device_params.load_device_params`.
    """
    array = MemristorArray(params or DeviceParams(), rows, cols, seed)
    return FirmwareEndpoint(Firmware(array, device_preset=preset, device_config=config))
