"""The Keithley 2450's reading buffers, emulated: fill-continuous buffers of readings and the
formatting of their elements for ``:TRACe:DATA?``, ``:FETCh?`` and ``:READ?``.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

import numpy as np

from firmware_stub.scpi.instrument import fmt

DEFAULT_BUFFERS = ("defbuffer1", "defbuffer2")
DEFAULT_BUFFER_POINTS = 100_000
MAX_BUFFER_POINTS = 6_875_000
#: the date and time the emulated instrument reports for board-clock zero (its time stamps)
CLOCK_EPOCH = _dt.datetime(2024, 1, 1, tzinfo=_dt.timezone.utc)
#: reading-buffer elements (short form, long form) of ``:TRACe:DATA?`` and ``:FETCh?``
BUFFER_ELEMENTS = (("DATE", "DATE"), ("FORM", "FORMatted"), ("FRAC", "FRACtional"), ("READ", "READing"),
                   ("REL", "RELative"), ("SEC", "SEConds"), ("SOUR", "SOURce"), ("SOURFORM", "SOURFORMatted"),
                   ("SOURSTAT", "SOURSTATus"), ("SOURUNIT", "SOURUNIT"), ("STAT", "STATus"), ("TIME", "TIME"),
                   ("TST", "TSTamp"), ("UNIT", "UNIT"))
UNITS = {"CURR": "Amp DC", "VOLT": "Volt DC", "RES": "Ohm"}


@dataclass(frozen=True)
class Reading:
    """One entry of a reading buffer."""

    value: float
    source: float
    clock_sec: float
    sense_func: str
    source_func: str
    status: int
    output_on: bool


@dataclass
class ReadingBuffer:
    """A 2450 reading buffer: fill-continuous (when full, the oldest reading is overwritten)."""

    capacity: int
    entries: list[Reading] = field(default_factory=list)
    stats_from: int = 0

    def add(self, r: Reading) -> None:
        self.entries.append(r)
        if len(self.entries) > self.capacity:
            drop = len(self.entries) - self.capacity
            del self.entries[:drop]
            self.stats_from = max(0, self.stats_from - drop)

    def clear(self) -> None:
        self.entries.clear()
        self.stats_from = 0

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        self.clear()  # resizing a buffer clears it, as on the instrument

    def clear_statistics(self) -> None:
        self.stats_from = len(self.entries)

    def statistics_values(self) -> np.ndarray:
        return np.array([r.value for r in self.entries[self.stats_from:]], dtype=float)

    def format(self, r: Reading, elements: list[str], buf: "ReadingBuffer") -> str:
        t0 = buf.entries[0].clock_sec if buf.entries else r.clock_sec
        when = CLOCK_EPOCH + _dt.timedelta(seconds=r.clock_sec)
        source_unit = UNITS[r.source_func]
        out = []
        for e in elements:
            if e == "READ":
                out.append(fmt(r.value))
            elif e == "SOUR":
                out.append(fmt(r.source))
            elif e == "REL":
                out.append(fmt(r.clock_sec - t0))
            elif e == "SEC":
                out.append(str(int(when.timestamp())))
            elif e == "FRAC":
                out.append(fmt(r.clock_sec % 1.0))
            elif e == "DATE":
                out.append(when.strftime("%m/%d/%Y"))
            elif e == "TIME":
                out.append(when.strftime("%H:%M:%S"))
            elif e == "TST":
                out.append(when.strftime("%m/%d/%Y %H:%M:%S.") + f"{when.microsecond * 1000:09d}")
            elif e == "UNIT":
                out.append(UNITS[r.sense_func])
            elif e == "SOURUNIT":
                out.append(source_unit)
            elif e == "STAT":
                out.append(str(r.status))
            elif e == "SOURSTAT":
                out.append(str(r.status | (32 if r.output_on else 0)))  # bit 5: output on
            elif e == "FORM":
                out.append(f"{r.value:+.6g} {UNITS[r.sense_func].split()[0]}")
            else:  # SOURFORM
                out.append(f"{r.source:+.6g} {source_unit.split()[0]}")
        return ",".join(out)
