"""The messages of the FPGA protocol: the opcode -> message class registry, shared by host and board.

One frozen dataclass per opcode and direction (:mod:`protocols.requests`, :mod:`protocols.replies`),
each with ``encode(layout)`` and a ``decode`` classmethod; :data:`REQUESTS` and :data:`REPLIES` map an
opcode to them, so the driver (:mod:`drivers.fpga`) and the firmware stub (:mod:`firmware_stub.firmware`)
dispatch through the one codec (sans-I/O, as h11).  Refusals of any opcode carry an
:class:`~protocols.replies.ErrorReply`.  The byte layouts are written down in ``docs/PROTOCOL.md``.

The ``encode_*``/``decode_*`` functions at the end are shorthands over the dataclasses, in the argument
order of their payloads, for tests and scripts that build payloads by hand.
"""

from __future__ import annotations

import numpy as np

from protocols.opcodes import (
    Layout,
    Op,
    PayloadError,
    Status,
    decode_json,
    encode_json,
    status_name,
    unpack,
)
from protocols.replies import (
    ClockReply,
    CodesReply,
    EmptyReply,
    ErrorReply,
    FormReply,
    HelloReply,
    IvSweepReply,
    ProgramReply,
    PulseResult,
    StatusReply,
    TrueParamsReply,
    VmmReply,
    decode_codes_u16,
)
from protocols.requests import (
    _REGION,
    ClockRequest,
    FormRequest,
    HelloRequest,
    IvSweepRequest,
    ProgramRequest,
    PulseRequest,
    ReadCellsRequest,
    ReadRegionRequest,
    RestoreRequest,
    SafeIdleRequest,
    SetProfilesRequest,
    SnapshotImage,
    SnapshotRequest,
    StatusRequest,
    TrueParamsRequest,
    VmmRequest,
    WaitRequest,
    decode_cells,
    decode_f64,
    encode_cells,
)

__all__ = [
    "REPLIES",
    "REQUESTS",
    "ClockReply",
    "ClockRequest",
    "CodesReply",
    "EmptyReply",
    "ErrorReply",
    "FormReply",
    "FormRequest",
    "HelloReply",
    "HelloRequest",
    "IvSweepReply",
    "IvSweepRequest",
    "Layout",
    "Op",
    "PayloadError",
    "ProgramReply",
    "ProgramRequest",
    "PulseRequest",
    "PulseResult",
    "ReadCellsRequest",
    "ReadRegionRequest",
    "RestoreRequest",
    "SafeIdleRequest",
    "SetProfilesRequest",
    "SnapshotImage",
    "SnapshotRequest",
    "Status",
    "StatusReply",
    "StatusRequest",
    "TrueParamsReply",
    "TrueParamsRequest",
    "VmmReply",
    "VmmRequest",
    "WaitRequest",
    "decode_cells",
    "decode_codes_u16",
    "decode_f64",
    "decode_json",
    "decode_reply",
    "encode_cells",
    "encode_json",
    "status_name",
]

REQUESTS: dict[Op, type] = {
    Op.HELLO: HelloRequest,
    Op.STATUS: StatusRequest,
    Op.SET_PROFILES: SetProfilesRequest,
    Op.PULSE: PulseRequest,
    Op.READ_REGION: ReadRegionRequest,
    Op.READ_CELLS: ReadCellsRequest,
    Op.VMM: VmmRequest,
    Op.PROGRAM: ProgramRequest,
    Op.FORM: FormRequest,
    Op.IV_SWEEP: IvSweepRequest,
    Op.CLOCK: ClockRequest,
    Op.WAIT: WaitRequest,
    Op.SAFE_IDLE: SafeIdleRequest,
    Op.SNAPSHOT: SnapshotRequest,
    Op.RESTORE: RestoreRequest,
    Op.TRUE_PARAMS: TrueParamsRequest,
}
"""Request payload class of each opcode: ``REQUESTS[op].decode(payload, layout)``."""

REPLIES: dict[Op, type] = {
    Op.HELLO: HelloReply,
    Op.STATUS: StatusReply,
    Op.SET_PROFILES: EmptyReply,
    Op.PULSE: PulseResult,
    Op.READ_REGION: CodesReply,
    Op.READ_CELLS: CodesReply,
    Op.VMM: VmmReply,
    Op.PROGRAM: ProgramReply,
    Op.FORM: FormReply,
    Op.IV_SWEEP: IvSweepReply,
    Op.CLOCK: ClockReply,
    Op.WAIT: ClockReply,
    Op.SAFE_IDLE: EmptyReply,
    Op.SNAPSHOT: SnapshotImage,
    Op.RESTORE: EmptyReply,
    Op.TRUE_PARAMS: TrueParamsReply,
}
"""Reply payload class of each opcode (status OK): ``REPLIES[op].decode(payload, request, layout)``."""


def decode_reply(request, payload: bytes, layout: Layout):
    """The OK reply to ``request`` (a request dataclass), decoded."""
    return REPLIES[request.OP].decode(payload, request, layout)


# ---- shorthands: payload bytes from and to plain values ------------------------------------------------
def _packed(bits: int | None) -> Layout:
    return Layout(dac_bits=bits, adc_bits=bits)


def encode_profiles(set_v: float, set_w: float, reset_v: float, reset_w: float) -> bytes:
    return SetProfilesRequest(set_v, set_w, reset_v, reset_w).encode()


def decode_profiles(data: bytes) -> tuple[float, float, float, float]:
    r = SetProfilesRequest.decode(data)
    return r.set_v, r.set_width_sec, r.reset_v, r.reset_width_sec


def encode_pulse_request(flat_idx: np.ndarray, counts: np.ndarray, tag: int = 0,
                         last_width_ticks: np.ndarray | None = None, version: int = 2) -> bytes:
    return PulseRequest(flat_idx, counts, tag, last_width_ticks).encode(Layout(version))


def decode_pulse_request(data: bytes, version: int = 2) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None]:
    r = PulseRequest.decode(data, Layout(version))
    return r.flat_idx, r.counts, r.tag, r.last_width_ticks


def encode_pulse_result(r: PulseResult) -> bytes:
    return r.encode()


def decode_pulse_result(data: bytes) -> PulseResult:
    return PulseResult.decode(data)


def encode_region(row0: int, col0: int, rows: int, cols: int) -> bytes:
    return ReadRegionRequest(row0, col0, rows, cols).encode()


def decode_region(data: bytes, what: str = "READ_REGION", offset: int = 0) -> tuple[int, int, int, int]:
    return unpack(_REGION, data, what, offset)


def encode_codes_u16(codes: np.ndarray) -> bytes:
    return CodesReply(codes).encode()


def encode_vmm_request(r: VmmRequest, dac_bits: int | None = None) -> bytes:
    return r.encode(_packed(dac_bits))


def decode_vmm_request(data: bytes, dac_bits: int | None = None) -> VmmRequest:
    return VmmRequest.decode(data, _packed(dac_bits))


def encode_vmm_result(codes: np.ndarray, adc_bits: int | None = None) -> bytes:
    return VmmReply(codes).encode(_packed(adc_bits))


def decode_vmm_result(data: bytes, batch: int, n_out: int, adc_bits: int | None = None) -> np.ndarray:
    shape = VmmRequest(0, 0, n_out, 0, True, np.zeros((batch, 0)), 1.0)  # what the reply's layout depends on
    return VmmReply.decode(data, shape, _packed(adc_bits)).codes


def encode_program_request(flat_sorted: np.ndarray, target_codes: np.ndarray, tolerance_s: float, max_iter: int,
                           max_pulses_per_round: int) -> bytes:
    return ProgramRequest(flat_sorted, target_codes, tolerance_s, max_iter, max_pulses_per_round).encode()


def decode_program_request(data: bytes) -> tuple[np.ndarray, np.ndarray, float, int, int]:
    r = ProgramRequest.decode(data)
    return r.flat_idx, r.target_codes, r.tolerance_s, r.max_iter, r.max_pulses_per_round


def encode_program_result(achieved_codes: np.ndarray, converged: np.ndarray, iterations: np.ndarray,
                          pulses: int, energy_j: float) -> bytes:
    return ProgramReply(achieved_codes, converged, iterations, pulses, energy_j).encode()


def decode_program_result(data: bytes, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
    r = ProgramReply.decode(data, ReadCellsRequest(np.zeros(n, np.int64)))
    return r.achieved_codes, r.converged, r.iterations, r.pulses, r.energy_j


def encode_f64(x: float) -> bytes:
    return ClockReply(x).encode()


def encode_form_request(flat_sorted: np.ndarray, voltage_v: float, width_sec: float, compliance_a: float) -> bytes:
    return FormRequest(flat_sorted, voltage_v, width_sec, compliance_a).encode()


def decode_form_request(data: bytes) -> tuple[np.ndarray, float, float, float]:
    r = FormRequest.decode(data)
    return r.flat_idx, r.voltage_v, r.width_sec, r.compliance_a


def encode_form_result(formed: np.ndarray, g_codes: np.ndarray) -> bytes:
    return FormReply(formed, g_codes).encode()


def decode_form_result(data: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
    r = FormReply.decode(data, ReadCellsRequest(np.zeros(n, np.int64)))
    return r.formed, r.g_codes


def encode_iv_request(flat_sorted: np.ndarray, voltages_v: np.ndarray, dwell_sec: float, compliance_a: float) -> bytes:
    return IvSweepRequest(flat_sorted, voltages_v, dwell_sec, compliance_a).encode()


def decode_iv_request(data: bytes) -> tuple[np.ndarray, np.ndarray, float, float]:
    r = IvSweepRequest.decode(data)
    return r.flat_idx, r.voltages_v, r.dwell_sec, r.compliance_a


def decode_iv_result(data: bytes, n_cells: int, n_v: int) -> np.ndarray:
    shape = IvSweepRequest(np.zeros(n_cells, np.int64), np.zeros(n_v), 0.0, 0.0)
    return IvSweepReply.decode(data, shape).currents_a
