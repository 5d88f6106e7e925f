"""``hil bench``: link and emulator figures -- speed of the array model, bytes on the wire, round trips.

One of the two doors from above into ``firmware_stub`` and past the Board contract (docs/DESIGN.md,
Layers): it times the emulator's array model and the link itself.

Each speed figure is a ratio or rate measured in this run, against a baseline
measured in the same run where one exists (the per-cell Python loop).
"""

from __future__ import annotations

import json
import time

import click
import numpy as np
from pydantic import BaseModel, Field

from drivers.address import open_board
from drivers.board import Board, PulseBatch
from drivers.errors import BoardError
from firmware_stub.array_model import MemristorArray
from firmware_stub.device_params import DeviceParams
from firmware_stub.reference_loop import apply_pulses_loop
from hil.cli.app import cli, fail, open_for
from protocols.version import software_version

BENCH_SIDE = 1024
NOMINAL = ((1.6, 50e-9), (-1.8, 50e-9))


class BenchReport(BaseModel):
    board: str
    rows: int
    cols: int
    emulator_updates_per_s: float = Field(description="device-pulse updates/s of the vectorised 1024x1024 model, "
                                                      "whole-array single-polarity sweeps")
    emulator_updates_per_s_mixed: float = Field(description="the same with random polarity per device")
    loop_updates_per_s: float = Field(description="the same physics as a per-cell Python loop")
    emulator_speedup_vs_loop: float
    wire_bytes_per_written_device: dict[str, float]
    wire_bytes_per_device_full_read: float
    round_trip_sec: float = Field(description="median request/reply time of a CLOCK request on the board")
    pulse_batches_per_s: float = Field(description="batches of 64 single-pulse devices per second on the board")
    step: "StepFigures | None" = Field(None, description="a training-shaped step on this board (VMM forward, "
                                                         "transposed VMM, sparse pulse batch)")


class StepFigures(BaseModel):
    batch: int
    n_in: int
    n_out: int
    devices_written: int
    host_sec_per_step: float = Field(description="host wall time per step on this board")
    emu_host_sec_per_step: float = Field(description="host wall time per step on an in-process emulator of the "
                                                     "same geometry, measured in the same run")
    host_over_emu: float = Field(description="host time per step on this board / on the in-process emulator")
    host_over_wire: float = Field(description="host time per step / wire time of the same bytes at the nominal rate")
    wire_bytes_per_step: float = Field(description="bytes on the link per step, both ways, framing included")
    wire_sec_per_step_at_nominal: float = Field(description="the same bytes at the link's nominal rate "
                                                            "(HELLO link_baud, 10 bits a byte)")
    link_baud: float
    floor_bytes_per_step: float = Field(description="information floor: inputs at DAC width, outputs at ADC "
                                                    "width (both VMMs), the sparse batch's log2 C(N, k) index bits "
                                                    "and log2(6) bits per count in -3..3")
    bytes_over_floor: float
    goodput_clean: float = Field(description="floor bytes per wire byte, clean in-process link")
    goodput_lossy: float = Field(description="floor bytes per wire byte with 0.1 % flipped + 0.05 % dropped bytes")
    lossy_polls_per_step: float
    pipelining: "PipelineFigures"


class PipelineFigures(BaseModel):
    turnaround_sec: float = Field(description="fixed link latency added to every answer (in-process emulator "
                                            "behind hil.link_faults.DelayedLink)")
    window: int = Field(description="requests in flight at once in the pipelined run (protocol version 5)")
    host_sec_per_step_window_1: float = Field(description="host wall time per step, one request in flight")
    host_sec_per_step_pipelined: float = Field(description="the same steps with the window: the pulse batch's "
                                                           "round trip overlaps the next forward VMM")
    speedup: float = Field(description="window-1 time / pipelined time, measured in the same run (the in-process "
                                       "emulator's own compute counts as host time in both)")
    link_waits_per_step_window_1: float = Field(description="times per step the host waited for an answer still "
                                                            "under way on the link, one request in flight")
    link_waits_per_step_pipelined: float = Field(description="the same with the window")
    same_board_state: bool = Field(description="both runs left the emulated array in the same state")


def _random_batch(rng: np.random.Generator, n_cells: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    k = max(1, int(round(n_cells * fraction)))
    flat = np.sort(rng.choice(n_cells, size=k, replace=False)).astype(np.int64)
    counts = rng.integers(1, 4, size=k) * rng.choice(np.array([-1, 1]), size=k)
    return flat, counts.astype(np.int64)


def measure_array_speed(repeats: int = 5, loop_devices: int = 20_000, seed: int = 0) -> tuple[float, float, float]:
    """Device-pulse updates per second on a 1024x1024 array: (whole-array sweeps, mixed-sign batches, loop).

    A sweep gives every device one pulse of the same polarity (SET, then RESET, ...);
    a mixed batch gives every device one pulse of random polarity.  The loop is the
    same physics written per cell (the baseline), timed on ``loop_devices`` devices.
    """
    array = MemristorArray(DeviceParams(), BENCH_SIDE, BENCH_SIDE, seed)
    n = array.rows * array.cols
    flat = np.arange(n, dtype=np.int64)
    ones = np.ones(n, dtype=np.int64)
    array.apply_pulses(flat, ones, *NOMINAL)  # warm-up
    t0 = time.perf_counter()
    for r in range(repeats):
        array.apply_pulses(flat, -ones if r % 2 == 0 else ones, *NOMINAL)
    sweep = n * repeats / (time.perf_counter() - t0)

    mixed_signs = np.random.default_rng(seed).choice(np.array([-1, 1]), size=n)
    t0 = time.perf_counter()
    for _ in range(repeats):
        array.apply_pulses(flat, mixed_signs, *NOMINAL)
    mixed = n * repeats / (time.perf_counter() - t0)

    sub = np.sort(np.random.default_rng(seed).choice(n, size=loop_devices, replace=False)).astype(np.int64)
    t0 = time.perf_counter()
    apply_pulses_loop(array, sub, mixed_signs[sub], *NOMINAL)
    loop = loop_devices / (time.perf_counter() - t0)
    return sweep, mixed, loop


def measure_wire_bytes(seed: int = 0) -> tuple[dict[str, float], float]:
    """Bytes on the wire (request + reply, framing included) per device, through the real codec."""
    with open_board(f"emu?rows={BENCH_SIDE}&cols={BENCH_SIDE}&seed={seed}") as board:
        rng = np.random.default_rng(seed)
        n = board.info.rows * board.info.cols
        per_device: dict[str, float] = {}
        for fraction in (0.001, 0.1):
            flat, counts = _random_batch(rng, n, fraction)
            before = board.wire_bytes
            board.pulse(PulseBatch(flat // board.info.cols, flat % board.info.cols, counts))
            per_device[str(fraction)] = (board.wire_bytes - before) / flat.size
        before = board.wire_bytes
        board.read()
        full_read = (board.wire_bytes - before) / n
    return per_device, full_read


def measure_board(board: Board, seconds: float = 1.0) -> tuple[float, float]:
    """(median round trip s, single-pulse batches of 64 devices per second) on ``board``."""
    trips = []
    deadline = time.perf_counter() + seconds / 2
    while time.perf_counter() < deadline or len(trips) < 5:
        t0 = time.perf_counter()
        board.clock()
        trips.append(time.perf_counter() - t0)
    rng = np.random.default_rng(1)
    n = board.info.rows * board.info.cols
    k = min(64, n)
    batches = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds / 2 or batches < 5:
        flat = np.sort(rng.choice(n, size=k, replace=False))
        counts = np.where(batches % 2, 1, -1) * np.ones(k, dtype=np.int64)
        board.pulse(PulseBatch(flat // board.info.cols, flat % board.info.cols, counts))
        batches += 1
    return float(np.median(trips)), batches / (time.perf_counter() - t0)


STEP_BATCH = 32


def _step_shape(board: Board) -> tuple[int, int]:
    return min(board.info.rows, 64), min(board.info.cols, 32)


def _one_step(board: Board, rng: np.random.Generator, n_in: int, n_out: int, k: int) -> None:
    """A training-shaped step: forward VMM, transposed VMM (backward), a sparse pulse batch."""
    from drivers.board import Region

    region = Region(0, 0, n_in, n_out)
    v = rng.uniform(-0.1, 0.1, size=(STEP_BATCH, n_in))
    board.vmm(region, v, i_full_scale_a=1e-3)
    board.vmm(region, rng.uniform(-0.1, 0.1, size=(STEP_BATCH, n_out)), transpose=True, i_full_scale_a=1e-3)
    flat = np.sort(rng.choice(n_in * n_out, size=k, replace=False))
    counts = rng.integers(1, 4, size=k) * rng.choice(np.array([-1, 1]), size=k)
    # as in training: the batch's report is not needed before the next step's forward VMM
    board.pulse_async(PulseBatch(flat // n_out, flat % n_out, counts))


PIPELINE_TURNAROUND_SEC = 1e-3


def measure_pipelining(n_in: int, n_out: int, k: int, steps: int = 20, seed: int = 0,
                       turnaround_sec: float = PIPELINE_TURNAROUND_SEC) -> PipelineFigures:
    """Host time per training-shaped step through a link with a fixed latency, one request in flight
    against the negotiated window, measured in the same run on two identical emulators."""
    from drivers.fpga import FpgaBoard
    from drivers.links import InProcessLink
    from firmware_stub.firmware import make_emulator
    from hil.link_faults import DelayedLink
    from protocols.session import DEFAULT_WINDOW

    endpoints = [make_emulator(n_in, n_out, seed=seed) for _ in range(2)]
    links = [DelayedLink(InProcessLink(e), turnaround_sec) for e in endpoints]
    boards = [FpgaBoard(link, window=w) for link, w in zip(links, (1, DEFAULT_WINDOW))]
    rngs = [np.random.default_rng(seed) for _ in boards]
    times, waits = [0.0, 0.0], [0, 0]
    block = 5
    with boards[0], boards[1]:
        for b, r in zip(boards, rngs):
            _one_step(b, r, n_in, n_out, k)  # warm-up
            b.clock()
        for _ in range(-(-steps // block)):
            # the two boards take turns by blocks of steps (each ending with a request that waits for the
            # last batch), so a change of the machine's load hits both
            for j, b in enumerate(boards):
                w0, t0 = links[j].waits, time.perf_counter()
                for _ in range(block):
                    _one_step(b, rngs[j], n_in, n_out, k)
                b.clock()
                times[j] += time.perf_counter() - t0
                waits[j] += links[j].waits - w0
        windows = [b.window for b in boards]
    steps = -(-steps // block) * block
    times = [t / steps for t in times]
    waits = [w / steps for w in waits]
    digests = [e.firmware.array.state_digest() for e in endpoints]
    return PipelineFigures(turnaround_sec=turnaround_sec, window=windows[1], host_sec_per_step_window_1=times[0],
                           host_sec_per_step_pipelined=times[1], speedup=times[0] / times[1],
                           link_waits_per_step_window_1=waits[0], link_waits_per_step_pipelined=waits[1],
                           same_board_state=digests[0] == digests[1])


def _floor_bytes(board: Board, n_in: int, n_out: int, k: int) -> float:
    from math import lgamma, log, log2

    info = board.info
    vmm_bits = STEP_BATCH * (n_in * info.dac_bits + n_out * info.adc_bits)  # forward
    vmm_bits += STEP_BATCH * (n_out * info.dac_bits + n_in * info.adc_bits)  # transposed
    n = n_in * n_out
    index_bits = (lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1)) / log(2)
    return (vmm_bits + index_bits + k * log2(6)) / 8


def measure_step(board: Board, steps: int = 20, seed: int = 0) -> StepFigures:
    """Host time and bytes of a training-shaped step on ``board``, against wire time and the information floor;
    goodput on an in-process emulator of the same geometry, clean and through a lossy link."""
    from drivers.fpga import FpgaBoard
    from drivers.links import InProcessLink
    from firmware_stub.firmware import make_emulator
    from hil.link_faults import FaultyLink

    n_in, n_out = _step_shape(board)
    k = max(1, n_in * n_out // 100)
    rng = np.random.default_rng(seed)
    _one_step(board, rng, n_in, n_out, k)  # warm-up
    before, t0 = board.wire_bytes, time.perf_counter()
    for _ in range(steps):
        _one_step(board, rng, n_in, n_out, k)
    host_sec = (time.perf_counter() - t0) / steps
    per_step = (board.wire_bytes - before) / steps
    baud = float(getattr(board.link, "baudrate", 0) or 3e6) if hasattr(board, "link") else 3e6
    floor = _floor_bytes(board, n_in, n_out, k)

    def goodput(lossy: bool) -> tuple[float, float, float]:
        """(goodput, polls per step, host seconds per step) on an in-process emulator."""
        endpoint = make_emulator(n_in, n_out, seed=seed)
        link = InProcessLink(endpoint)
        if lossy:
            link = FaultyLink(link, seed=seed, drop=5e-4, corrupt=1e-3, garbage=0.0, delay=0.0)
        with FpgaBoard(link, timeout_sec=0.02, retries=30) as b:
            r = np.random.default_rng(seed)
            _one_step(b, r, n_in, n_out, k)  # warm-up, as on the board measured
            w0, t_start = b.wire_bytes, time.perf_counter()
            for _ in range(steps):
                _one_step(b, r, n_in, n_out, k)
            return (floor * steps / (b.wire_bytes - w0), b.retransmissions / steps,
                    (time.perf_counter() - t_start) / steps)

    clean, _, emu_host_sec = goodput(False)
    lossy, polls, _ = goodput(True)
    wire_sec = per_step * 10 / baud
    return StepFigures(batch=STEP_BATCH, n_in=n_in, n_out=n_out, devices_written=k, host_sec_per_step=host_sec,
                       emu_host_sec_per_step=emu_host_sec, host_over_emu=host_sec / emu_host_sec,
                       host_over_wire=host_sec / wire_sec,
                       wire_bytes_per_step=per_step, wire_sec_per_step_at_nominal=wire_sec, link_baud=baud,
                       floor_bytes_per_step=floor, bytes_over_floor=per_step / floor, goodput_clean=clean,
                       goodput_lossy=lossy, lossy_polls_per_step=polls,
                       pipelining=measure_pipelining(n_in, n_out, k, steps, seed))


def run_bench(address: str, board: Board, quick: bool = False) -> BenchReport:
    vec, mixed, loop = measure_array_speed(repeats=2 if quick else 5, loop_devices=5_000 if quick else 20_000)
    wire, full_read = measure_wire_bytes()
    rtt, bps = measure_board(board, seconds=0.4 if quick else 2.0)
    return BenchReport(
        board=address, rows=board.info.rows, cols=board.info.cols,
        emulator_updates_per_s=vec, emulator_updates_per_s_mixed=mixed, loop_updates_per_s=loop, emulator_speedup_vs_loop=vec / loop,
        wire_bytes_per_written_device=wire, wire_bytes_per_device_full_read=full_read,
        round_trip_sec=rtt, pulse_batches_per_s=bps,
        step=measure_step(board, steps=5 if quick else 20) if board.info.capabilities.vmm else None,
    )


@cli.command()
@click.option("--board", "address", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--quick", is_flag=True, help="Shorter measurements (noisier figures).")
@click.pass_context
def bench(ctx: click.Context, address: str, as_json: bool, quick: bool) -> None:
    """Link and emulator figures: array model speed, bytes on the wire, round trips."""
    try:
        with open_for(ctx, address) as board:
            report = run_bench(address, board, quick=quick)
    except BoardError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps({"software_version": software_version(), **report.model_dump(mode="json")}, indent=2))
        return
    for key, value in report.model_dump().items():
        click.echo(f"{key:36s} {value}")
