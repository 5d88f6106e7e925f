"""The emulated bench the SCPI instrument emulators share: one array, one switch matrix, one clock.

Circuit model
-------------
The switch matrix (a Keithley 707B with 7174A-style 8x12 cards) has *rows* A..H that
carry instrument terminals and *columns* (numbered globally 1..12*slots; column ``k``
is slot ``(k-1)//12 + 1``, card column ``(k-1)%12 + 1``) that reach the array lines.
The :class:`Wiring` names the row of each terminal (SMU HI/LO, pulse generator
HI/LO) and the matrix column of every word line (array row) and bit line (array
column).  A closed crosspoint connects a terminal to a line.

Device (i, j) sits between word line i and bit line j (1T1R, all gates on).  It sees
a voltage only when both its lines are connected: ``V(word line) - V(bit line)``.
So the SMU drives every device whose word line is on SMU HI and bit line on SMU LO
(``+V``) or the reverse (``-V``, the read is symmetric), in parallel; the pulse
generator likewise between its HI and LO rows.  Unconnected lines float; sneak paths
through floating lines are not modelled (1T1R transistors block them).

* SMU: current ``I = V * sum(G_read)`` over the connected devices (fresh read noise
  from :meth:`MemristorArray.read_g`), quantised to the range resolution and clipped
  at the current limit (compliance).  A DC level beyond a switching threshold (or at
  an unformed device's forming voltage) acts on the devices for the integration time
  by the array's DC model (:meth:`MemristorArray.iv_sweep`: soft-bounds drift, SET
  capped at compliance / V, forming) -- a read disturb, or an I-V sweep step.
* Pulse generator: a burst of ``n`` pulses of the programmed level and width, as
  seen through the generator's 50 ohm output resistance and its load setting
  (with ``OUTP:LOAD 50`` the open-circuit voltage is twice the programmed one -- the
  classic trap that ``OUTP:LOAD INF`` avoids) into the connected devices in parallel.
* Nothing reaches a device through an instrument whose output is off.

Clock
-----
``clock_mode="virtual"`` (default): the array's clock only moves by the modelled
duration of what the instruments do (a command latency each, the SMU integration
time, relay settling, the burst length) and by the vendor command ``:EMUL:WAIT``;
the emulators answer as fast as the host asks.  ``clock_mode="wall"``: the array's
clock follows the host's monotonic time since the bench started (``:EMUL:WAIT`` is
refused), for benches driven as a real one would be, with real sleeps.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from firmware_stub.array_model import MemristorArray

log = logging.getLogger(__name__)

MATRIX_ROWS = "ABCDEFGH"
COLUMNS_PER_SLOT = 12
MAX_SLOTS = 6
GENERATOR_OUTPUT_OHMS = 50.0


@dataclass(frozen=True)
class Wiring:
    """Which matrix row carries which terminal, and which matrix column reaches which array line."""

    word_lines: tuple[int, ...]
    bit_lines: tuple[int, ...]
    smu_hi: str = "A"
    smu_lo: str = "B"
    pulse_hi: str = "C"
    pulse_lo: str = "D"
    columns_per_slot: int = COLUMNS_PER_SLOT

    @classmethod
    def default(cls, rows: int, cols: int) -> "Wiring":
        """Word lines on matrix columns 1..rows, bit lines on the next ``cols`` columns."""
        if rows + cols > COLUMNS_PER_SLOT * MAX_SLOTS:
            raise ValueError(f"a {rows}x{cols} array needs {rows + cols} matrix columns; a 707B with "
                             f"{MAX_SLOTS} cards of {COLUMNS_PER_SLOT} columns has {COLUMNS_PER_SLOT * MAX_SLOTS}")
        return cls(tuple(range(1, rows + 1)), tuple(range(rows + 1, rows + cols + 1)))

    def __post_init__(self) -> None:
        cols = list(self.word_lines) + list(self.bit_lines)
        if len(set(cols)) != len(cols):
            raise ValueError("two array lines share a matrix column")
        if min(cols, default=1) < 1 or max(cols, default=1) > self.columns_per_slot * MAX_SLOTS:
            raise ValueError("matrix column outside the mainframe")
        terms = [self.smu_hi, self.smu_lo, self.pulse_hi, self.pulse_lo]
        if len(set(terms)) != 4 or any(t not in MATRIX_ROWS for t in terms):
            raise ValueError(f"terminal rows must be four distinct letters of {MATRIX_ROWS}")

    @property
    def slots(self) -> int:
        return (max(self.word_lines + self.bit_lines) - 1) // self.columns_per_slot + 1

    def channel(self, row: str, column: int) -> str:
        """707B channel specifier of a crosspoint: slot, row letter, two-digit card column."""
        slot, col = divmod(column - 1, self.columns_per_slot)
        return f"{slot + 1}{row}{col + 1:02d}"


@dataclass
class BenchCounters:
    relay_operations: int = 0
    hot_switches: int = 0  # crosspoints changed while a source drove a non-zero level
    smu_readings: int = 0
    bursts: int = 0
    read_disturbs: int = 0
    warnings: list[str] = field(default_factory=list)


class EmulatedBench:
    """Array, routing and clock shared by the three instrument emulators (thread-safe via :attr:`lock`)."""

    def __init__(self, array: MemristorArray, wiring: Wiring | None = None, clock_mode: str = "virtual"):
        if clock_mode not in ("virtual", "wall"):
            raise ValueError("clock_mode must be 'virtual' or 'wall'")
        self.array = array
        self.wiring = wiring or Wiring.default(array.rows, array.cols)
        if len(self.wiring.word_lines) != array.rows or len(self.wiring.bit_lines) != array.cols:
            raise ValueError("the wiring must name one matrix column per word line and per bit line")
        self.clock_mode = clock_mode
        self.lock = threading.RLock()
        self.closed: set[tuple[str, int]] = set()
        self.counters = BenchCounters()
        self.instruments: dict[str, object] = {}
        self._line_of = {c: ("wl", i) for i, c in enumerate(self.wiring.word_lines)}
        self._line_of.update({c: ("bl", j) for j, c in enumerate(self.wiring.bit_lines)})
        self._wall0 = time.monotonic()
        self._clock0 = array.clock_sec

    # ---- clock ------------------------------------------------------------------------
    @property
    def virtual(self) -> bool:
        return self.clock_mode == "virtual"

    def sync_clock(self) -> None:
        """Wall mode: bring the array clock up to the host's time (never backwards)."""
        if not self.virtual:
            wall = self._clock0 + (time.monotonic() - self._wall0)
            if wall > self.array.clock_sec:
                self.array.clock_sec = wall

    def advance(self, dt_sec: float) -> None:
        """Account a modelled duration (virtual mode only: in wall mode real time passes by itself)."""
        if self.virtual and dt_sec > 0:
            self.array.advance(dt_sec)

    def wait(self, dt_sec: float) -> float:
        if not self.virtual:
            raise ValueError("the bench runs on the wall clock; wait on the host instead")
        self.array.advance(dt_sec)
        return self.array.clock_sec

    @property
    def clock_sec(self) -> float:
        self.sync_clock()
        return self.array.clock_sec

    # ---- registration and safety ----------------------------------------------------------
    def register(self, kind: str, instrument: object) -> None:
        self.instruments[kind] = instrument

    def energized(self) -> list[str]:
        """Sources that drive a non-zero level into their terminals right now."""
        out = []
        for kind, inst in self.instruments.items():
            level = getattr(inst, "driven_level_v", None)
            if level is not None and abs(level()) > 1e-3:
                out.append(kind)
        return out

    def warn(self, message: str) -> None:
        self.counters.warnings.append(message)
        log.warning("emulated bench: %s", message)

    # ---- routing ----------------------------------------------------------------------------
    def set_crosspoints(self, close: set[tuple[str, int]], open_: set[tuple[str, int]]) -> int:
        """Open then close crosspoints (break before make); returns how many changed state."""
        new = (self.closed - open_) | close
        changed = self.closed ^ new
        if changed:
            self.counters.relay_operations += 1
            hot = self.energized()
            if hot:
                self.counters.hot_switches += 1
                self.warn(f"crosspoints switched while {', '.join(hot)} drove a level (hot switching)")
        self.closed = new
        return len(changed)

    def lines_on(self, row: str) -> tuple[np.ndarray, np.ndarray]:
        """(word lines, bit lines) connected to matrix row ``row``."""
        wl, bl = [], []
        for r, c in self.closed:
            if r == row and c in self._line_of:
                kind, k = self._line_of[c]
                (wl if kind == "wl" else bl).append(k)
        return np.array(sorted(wl), dtype=np.int64), np.array(sorted(bl), dtype=np.int64)

    def devices_between(self, hi_row: str, lo_row: str) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices of devices seeing +V (word line on HI, bit line on LO) and -V (the reverse)."""
        wl_h, bl_h = self.lines_on(hi_row)
        wl_l, bl_l = self.lines_on(lo_row)
        cols = self.array.cols
        pos = (wl_h[:, None] * cols + bl_l[None, :]).ravel()
        neg = (wl_l[:, None] * cols + bl_h[None, :]).ravel()
        return np.unique(pos), np.unique(neg)

    # ---- physics ---------------------------------------------------------------------------
    def _stress(self, pos: np.ndarray, neg: np.ndarray, v: float, width_sec: float, n: int = 1) -> None:
        """``n`` pulses of ``v`` (device-side, signed) on ``pos`` and ``-v`` on ``neg``."""
        if v == 0 or n <= 0 or (pos.size + neg.size) == 0:
            return
        flat = np.concatenate([pos, neg])
        sign = np.concatenate([np.ones(pos.size, np.int64), -np.ones(neg.size, np.int64)])
        if v < 0:
            sign = -sign
        order = np.argsort(flat)
        a = abs(v)
        self.array.apply_pulses(flat[order], sign[order] * int(n), (a, width_sec), (-a, width_sec))

    def _over_threshold(self, pos: np.ndarray, neg: np.ndarray, v: float) -> bool:
        """Whether +v on ``pos`` or -v on ``neg`` reaches a switching threshold."""
        p = self.array.params

        def over(x: float) -> bool:
            return x >= p.v_set_threshold_v or x <= p.v_reset_threshold_v

        return bool((pos.size and over(v)) or (neg.size and over(-v)))

    def _may_form(self, pos: np.ndarray, neg: np.ndarray, v: float) -> bool:
        """Whether a device that sees a positive level is unformed and that level reaches its forming voltage."""
        a = self.array
        seen = np.concatenate([pos if v > 0 else pos[:0], neg if v < 0 else neg[:0]])
        return bool(seen.size and np.any(a.unformed[seen] & (abs(v) >= a.v_form[seen])))

    def _dc_stress(self, pos: np.ndarray, neg: np.ndarray, v: float, duration_sec: float, i_limit: float) -> None:
        """A DC level held for ``duration_sec`` under the SMU's current limit: the array's DC model
        (:meth:`MemristorArray.iv_sweep`, one step): soft-bounds drift in the continuous limit, a SET
        capped at ``i_limit / V``, forming of unformed devices whose forming voltage is reached.
        The limit is the SMU's, shared by the devices in parallel; each is capped at it alone (one
        routed device, as the VISA board drives it, is exact)."""
        for idx, level in ((pos, v), (neg, -v)):
            if idx.size:
                self.array.iv_sweep(idx, [level], duration_sec, i_limit)

    def smu_source_voltage(self, v: float, i_limit: float, integration_sec: float, range_a: float | None
                           ) -> tuple[float, bool]:
        """Current (A) out of SMU HI at source voltage ``v``; and whether the current limit clipped it."""
        w = self.wiring
        pos, neg = self.devices_between(w.smu_hi, w.smu_lo)
        self.counters.smu_readings += 1
        flat = np.concatenate([pos, neg])
        if self._over_threshold(pos, neg, v) or self._may_form(pos, neg, v):
            self.counters.read_disturbs += 1
            self.warn(f"SMU sources {v:+.3f} V beyond a switching threshold: the devices are stressed")
            self._dc_stress(pos, neg, v, integration_sec, i_limit)
        g = float(self.array.read_g(flat).sum()) if flat.size else 0.0
        current = v * g
        tripped = abs(current) > i_limit
        if tripped:
            current = float(np.sign(current)) * i_limit
        if range_a:
            res = range_a * 1e-6  # 6.5 digits
            current = round(current / res) * res
        return current, tripped

    def smu_source_current(self, i: float, v_limit: float, integration_sec: float) -> tuple[float, float, bool]:
        """(voltage, actual current, tripped) when the SMU sources current ``i`` into the connected devices."""
        w = self.wiring
        pos, neg = self.devices_between(w.smu_hi, w.smu_lo)
        flat = np.concatenate([pos, neg])
        self.counters.smu_readings += 1
        g = float(self.array.true_conductance_s(flat).sum()) if flat.size else 0.0
        if g <= 0:
            return (float(np.sign(i)) * v_limit if i else 0.0), 0.0, bool(i)
        v = i / g
        tripped = abs(v) > v_limit
        if tripped:
            v = float(np.sign(v)) * v_limit
        if self._over_threshold(pos, neg, v):
            self.counters.read_disturbs += 1
            self._stress(pos, neg, v, integration_sec)
        g_read = float(self.array.read_g(flat).sum())
        return v, v * g_read, tripped

    def generator_burst(self, pulse_v_open: float, baseline_v_open: float, width_sec: float, period_sec: float,
                        n: int) -> dict:
        """Apply a triggered burst of ``n`` pulses to the devices between the generator's HI and LO rows."""
        w = self.wiring
        pos, neg = self.devices_between(w.pulse_hi, w.pulse_lo)
        flat = np.concatenate([pos, neg])
        self.counters.bursts += 1
        before = self.array.clock_sec
        v_dev = 0.0
        if flat.size:
            g_total = float(self.array.true_conductance_s(flat).sum())
            divider = 1.0 / (1.0 + GENERATOR_OUTPUT_OHMS * g_total)
            v_dev = pulse_v_open * divider
            if abs(baseline_v_open) > 1e-3:
                self.warn(f"pulse baseline of {baseline_v_open:+.3f} V biases the devices between pulses")
            self._stress(pos, neg, v_dev, width_sec, n)
        total = n * period_sec
        self.advance(max(0.0, total - (self.array.clock_sec - before)))
        return {"devices": int(flat.size), "v_device": v_dev, "pulses": int(n) * int(flat.size)}

    # ---- truth ------------------------------------------------------------------------------
    def true_parameters(self) -> dict:
        out = self.array.true_parameters()
        out["bench"] = {"clock_mode": self.clock_mode, "word_lines": list(self.wiring.word_lines),
                        "bit_lines": list(self.wiring.bit_lines)}
        return out

    def status(self, with_digest: bool = False) -> dict:
        return {
            **self.array.totals(with_digest),
            "clock_sec": self.clock_sec,  # synchronised with the wall clock on a wall-clock bench
            "relay_operations": self.counters.relay_operations,
            "hot_switches": self.counters.hot_switches,
            "smu_readings": self.counters.smu_readings,
            "bursts": self.counters.bursts,
            "read_disturbs": self.counters.read_disturbs,
            "closed_crosspoints": len(self.closed),
        }

