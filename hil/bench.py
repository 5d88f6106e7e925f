"""Link and emulator figures for ``hil bench``: speed of the array model, bytes on the wire, round trips.

Each speed figure is a ratio or rate measured in this run, against a baseline
measured in the same run where one exists (the per-cell Python loop).
"""

from __future__ import annotations

import time

import numpy as np
from pydantic import BaseModel, Field

from drivers.address import open_board
from drivers.board import Board, PulseBatch
from firmware_stub.array_model import MemristorArray
from firmware_stub.device_params import DeviceParams
from firmware_stub.reference_loop import apply_pulses_loop

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
    round_trip_s: float = Field(description="median request/reply time of a CLOCK request on the board")
    pulse_batches_per_s: float = Field(description="batches of 64 single-pulse devices per second on the board")


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


def run_bench(address: str, board: Board, quick: bool = False) -> BenchReport:
    vec, mixed, loop = measure_array_speed(repeats=2 if quick else 5, loop_devices=5_000 if quick else 20_000)
    wire, full_read = measure_wire_bytes()
    rtt, bps = measure_board(board, seconds=0.4 if quick else 2.0)
    return BenchReport(
        board=address, rows=board.info.rows, cols=board.info.cols,
        emulator_updates_per_s=vec, emulator_updates_per_s_mixed=mixed, loop_updates_per_s=loop, emulator_speedup_vs_loop=vec / loop,
        wire_bytes_per_written_device=wire, wire_bytes_per_device_full_read=full_read,
        round_trip_s=rtt, pulse_batches_per_s=bps,
    )
