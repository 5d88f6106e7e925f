"""Shared pieces of the calibration procedures: parameters, raw data, sampling, reads, pulses.

Every procedure module follows one pattern::

    measured = procedure(board, Params(...), ...)   # -> Measured(result, raw)
    measured.result   # a pydantic model: the numbers (SI units), JSON-ready
    measured.raw      # a Raw: the arrays measured, with units and attributes

Procedures talk to the hardware only through the :class:`drivers.board.Board`
contract.  Every random choice (which devices are measured) comes from
:func:`stage_rng`, seeded from the run's seed and the stage name, so a run is a
deterministic function of the seed and the board's state.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from drivers.board import Board, PulseBatch, Region
from drivers.limits import (
    batch_slices,
    check_event_pulses,
    check_profile,
    max_pulses_per_event,
)
from protocols.unit_names import AcceptsOldSecondNames

Progress = Callable[[float], None] | None
"""Progress callback: called with the number of work units just finished."""


class ProcedureParams(AcceptsOldSecondNames):
    """Base of every procedure's parameter model: validated, immutable, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, description="seed of every random choice the procedure makes")


class SampleInfo(BaseModel):
    """Which devices a procedure used and how many pulses each received."""

    n_devices: int
    selection: str = Field(description="how the devices were chosen")
    pulses_per_device_min: int = 0
    pulses_per_device_max: int = 0
    pulses_per_device_mean: float = 0.0
    pulses_total: int = 0
    write_events_per_device: int = 0

    @classmethod
    def from_counts(cls, pulses: np.ndarray, selection: str, write_events: int = 0) -> SampleInfo:
        pulses = np.asarray(pulses, dtype=np.int64)
        if pulses.size == 0:
            return cls(n_devices=0, selection=selection, write_events_per_device=write_events)
        return cls(n_devices=int(pulses.size), selection=selection,
                   pulses_per_device_min=int(pulses.min()), pulses_per_device_max=int(pulses.max()),
                   pulses_per_device_mean=float(pulses.mean()), pulses_total=int(pulses.sum()),
                   write_events_per_device=int(write_events))


@dataclass
class Raw:
    """Raw arrays of a measurement, each with its unit (written as an HDF5 attribute)."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: Any, unit: str = "") -> np.ndarray:
        arr = np.asarray(value)
        self.arrays[name] = arr
        self.units[name] = unit
        return arr

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self.arrays


class Measured(NamedTuple):
    """What every procedure returns: the fitted/derived numbers and the raw arrays."""

    result: Any
    raw: Raw


class Stamp(AcceptsOldSecondNames):
    """Board-clock and wall-clock time stamps of a stage."""

    board_clock_start_sec: float
    board_clock_end_sec: float
    wall_start: str
    wall_end: str
    wall_duration_sec: float


class Stopwatch:
    """Records board-clock and wall time around a procedure."""

    def __init__(self, board: Board):
        self.board = board
        self.clock0 = board.clock()
        self.wall0 = time.time()
        self.mono0 = time.monotonic()

    def stamp(self) -> Stamp:
        return Stamp(board_clock_start_sec=self.clock0, board_clock_end_sec=self.board.clock(),
                     wall_start=_iso(self.wall0), wall_end=_iso(time.time()),
                     wall_duration_sec=time.monotonic() - self.mono0)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) + f".{int((t % 1) * 1000):03d}"


def now_iso() -> str:
    return _iso(time.time())


# ---- randomness -----------------------------------------------------------------------
def stage_rng(seed: int, stage: str) -> np.random.Generator:
    """The generator of one stage: independent of the other stages, fixed by (seed, stage)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(stage.encode())]))


def choose_devices(board: Board, n: int, rng: np.random.Generator, pool: np.ndarray | None = None,
                   what: str = "the sample") -> np.ndarray:
    """``n`` distinct flat device indices (sorted), drawn from ``pool`` (default: the whole array)."""
    total = board.info.rows * board.info.cols
    if pool is None:
        pool = np.arange(total, dtype=np.int64)
    pool = np.asarray(pool, dtype=np.int64)
    if n < 1:
        raise ValueError(f"{what} needs at least one device, got n_devices={n}")
    if n > pool.size:
        extra = "" if pool.size == total else f" (of the array's {total}, excluding stuck/unusable ones)"
        raise ValueError(f"{what} asks for {n} devices but only {pool.size} are available{extra}; "
                         "choose a smaller sample")
    return np.sort(rng.choice(pool, size=n, replace=False))


def split_flat(board: Board, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cols = board.info.cols
    flat = np.asarray(flat, dtype=np.int64)
    return flat // cols, flat % cols


# ---- regions (characterization) ----------------------------------------------------
Rect = tuple[int, int, int, int]


def region_flat(board: Board, region: Rect | None) -> np.ndarray:
    """Flat indices of the devices of ``region`` (row0, col0, rows, cols), the whole array when None."""
    info = board.info
    r = Region(*region) if region is not None else Region(0, 0, info.rows, info.cols)
    r.check_within(info.rows, info.cols)
    rr, cc = np.meshgrid(np.arange(r.row0, r.row0 + r.rows), np.arange(r.col0, r.col0 + r.cols), indexing="ij")
    return (rr * info.cols + cc).ravel()


def region_or_sample(board: Board, region: Rect | None, n_devices: int | None, seed: int, name: str) -> np.ndarray:
    """The devices of ``region`` if given, else ``n_devices`` drawn for the routine ``name`` (all when None)."""
    if region is not None:
        return region_flat(board, region)
    if n_devices is None:
        return region_flat(board, None)
    return choose_devices(board, n_devices, stage_rng(seed, name), what=f"the {name} sample")


# ---- reads ----------------------------------------------------------------------------
def read_repeated(board: Board, flat: np.ndarray, n_reads: int) -> np.ndarray:
    """``n_reads`` separate reads of the devices ``flat``: shape (n_reads, n)."""
    rows, cols = split_flat(board, flat)
    return np.stack([board.read_cells(rows, cols) for _ in range(n_reads)])


def read_mean(board: Board, flat: np.ndarray, n_reads: int) -> np.ndarray:
    """Mean of ``n_reads`` reads of the devices ``flat`` (siemens)."""
    return read_repeated(board, flat, n_reads).mean(axis=0)


def read_array_repeated(board: Board, n_reads: int) -> np.ndarray:
    """``n_reads`` reads of the whole array: shape (n_reads, rows, cols)."""
    return np.stack([board.read() for _ in range(n_reads)])


def quantisation_var(board: Board) -> float:
    """Variance added to one read by the read converter's LSB."""
    return board.info.g_lsb_s**2 / 12.0


# ---- pulses ---------------------------------------------------------------------------
def pulse_devices(board: Board, flat: np.ndarray, counts: np.ndarray | int, split: bool = False) -> int:
    """Give device ``flat[k]`` ``counts[k]`` pulses (+SET / -RESET) in one write event.

    Devices are packed into as few batches as the per-batch pulse limit allows, each
    device's pulses in one batch.  With ``split`` a count beyond what one batch may give
    one device (:func:`~drivers.limits.max_pulses_per_event`) is given as several
    consecutive batches (several write events); without it such a count is refused
    before anything is sent.  Returns the number of batches sent.
    """
    flat = np.asarray(flat, dtype=np.int64)
    counts = np.broadcast_to(np.asarray(counts, dtype=np.int64), flat.shape).copy()
    keep = counts != 0
    flat, counts = flat[keep], counts[keep]
    if flat.size == 0:
        return 0
    lim = board.limits
    if not split:
        check_event_pulses(int(np.abs(counts).max()), lim, "a write event")
    per_event = max_pulses_per_event(lim)
    rows, cols = split_flat(board, flat)
    batches = 0
    remaining = counts
    while np.any(remaining):
        now = np.clip(remaining, -per_event, per_event)
        sel = np.flatnonzero(now)
        for part in batch_slices(np.abs(now[sel]), lim.max_pulses_per_batch):
            idx = sel[part]
            board.pulse(PulseBatch(rows[idx], cols[idx], now[idx]))
            batches += 1
        remaining = remaining - now
    return batches


def check_board_profiles(board: Board) -> None:
    """Refuse before any operation if the board's current SET/RESET profiles break the effective limits."""
    set_p, reset_p = board.profiles
    check_profile(set_p, +1, board.limits)
    check_profile(reset_p, -1, board.limits)


def bootstrap_indices(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """``n_boot`` x ``n`` resampling indices (with replacement)."""
    return rng.integers(0, n, size=(n_boot, n))
