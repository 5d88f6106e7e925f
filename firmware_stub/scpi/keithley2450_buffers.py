"""The Keithley 2450's reading-buffer commands, emulated: readings taken into a buffer (``:READ?``,
``:MEASure?``, ``:FETCh?``) and the ``:TRACe`` subsystem (make, delete, clear, points, data,
statistics), mixed into :class:`firmware_stub.scpi.keithley2450.Keithley2450`.
"""

from __future__ import annotations

import math
import re

import numpy as np

from firmware_stub.scpi.instrument import Call, fmt, scpi
from firmware_stub.scpi.reading_buffer import (
    BUFFER_ELEMENTS,
    DEFAULT_BUFFERS,
    MAX_BUFFER_POINTS,
    Reading,
    ReadingBuffer,
)
from protocols.scpi import ScpiError, unquote


class ReadingBufferCommands:
    """Buffer commands of a :class:`Keithley2450` (its buffers, sense settings and measurement)."""

    # ---- readings into buffers --------------------------------------------------------------------------------
    def _buffer(self, c: Call, i: int) -> tuple[str, "ReadingBuffer"]:
        """The reading buffer named by parameter ``i`` (``defbuffer1`` when absent)."""
        name = unquote(c.params[i]) if len(c.params) > i else "defbuffer1"
        if name not in self.buffers:
            raise ScpiError(-224, f"reading buffer {name!r} not found")
        return name, self.buffers[name]

    def _take(self, buffer: "ReadingBuffer", n: int | None = None) -> None:
        """``n`` readings (default ``:SENS:COUN``) of the sense function into ``buffer``."""
        for _ in range(self.sense_count if n is None else n):
            value = self.measure()
            source = self.last_source_reading if self.readback[self.source_func] else \
                self.level[self.source_func]
            status = 8 if self.tripped else 0  # bit 3: the source limit was reached
            buffer.add(Reading(value, source, self.bench.clock_sec, self.sense_func, self.source_func, status,
                               self.output))

    def _elements(self, c: Call, first: int) -> list[str]:
        names = [e.strip().upper() for e in c.params[first:]] or ["READ"]
        out = []
        for e in names:
            for short, long in BUFFER_ELEMENTS:
                if e in (short, long.upper()):
                    out.append(short)
                    break
            else:
                raise ScpiError(-224, f"buffer element {e}")
        return out

    def _reading_reply(self, c: Call) -> str:
        """``:READ?`` / ``:MEASure?``: ``["buffer"[, elements...]]``, the last of the readings just taken."""
        _, buf = self._buffer(c, 0)
        self._take(buf)
        return buf.format(buf.entries[-1], self._elements(c, 1), buf)

    @scpi(":READ", write=False)
    def read(self, c: Call):
        return self._reading_reply(c)

    @scpi(":FETCh", write=False)
    def fetch(self, c: Call):
        _, buf = self._buffer(c, 0)
        if not buf.entries:
            raise ScpiError(-230, "the reading buffer is empty")
        return buf.format(buf.entries[-1], self._elements(c, 1), buf)

    @scpi(":MEASure", write=False)
    def measure_active(self, c: Call):
        return self._reading_reply(c)

    def _measure_function(self, c: Call, func: str):
        self.sense_func = func
        return self._reading_reply(c)

    @scpi(":MEASure:CURRent[:DC]", write=False)
    def measure_current(self, c: Call):
        return self._measure_function(c, "CURR")

    @scpi(":MEASure:VOLTage[:DC]", write=False)
    def measure_voltage(self, c: Call):
        return self._measure_function(c, "VOLT")

    @scpi(":MEASure:RESistance", write=False)
    def measure_resistance(self, c: Call):
        return self._measure_function(c, "RES")

    # ---- the TRACe subsystem (reading buffers) ----------------------------------------------------------------------
    @scpi(":TRACe:MAKE", query=False)
    def trace_make(self, c: Call):
        c.count(2, 3)
        name = unquote(c.params[0])
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,30}", name) or name in self.buffers:
            raise ScpiError(-224, f"cannot create reading buffer {name!r} (bad or existing name)")
        size = int(c.number(1, nmax=3, minimum=1, maximum=MAX_BUFFER_POINTS, name="buffer size"))
        if len(c.params) == 3:
            c.choice(2, {"STANdard": "STAN", "COMPact": "COMP", "FULL": "FULL", "WRITable": "WRIT",
                         "FULLWRITable": "FULLWRIT"}, nmax=3)
        self.buffers[name] = ReadingBuffer(size)

    @scpi(":TRACe:DELete", query=False)
    def trace_delete(self, c: Call):
        c.count(1)
        name, _ = self._buffer(c, 0)
        if name in DEFAULT_BUFFERS:
            raise ScpiError(-224, f"the default buffer {name} cannot be deleted")
        del self.buffers[name]

    @scpi(":TRACe:CLEar", query=False)
    def trace_clear(self, c: Call):
        c.count(0, 1)
        self._buffer(c, 0)[1].clear()

    @scpi(":TRACe:POINts")
    def trace_points(self, c: Call):
        if c.query:
            c.count(0, 1)
            return str(self._buffer(c, 0)[1].capacity)
        c.count(1, 2)
        size = int(c.number(0, nmax=2, minimum=1, maximum=MAX_BUFFER_POINTS, name="buffer size"))
        self._buffer(c, 1)[1].resize(size)

    @scpi(":TRACe:ACTual", write=False)
    def trace_actual(self, c: Call):
        c.count(0, 1)
        return str(len(self._buffer(c, 0)[1].entries))

    @scpi(":TRACe:ACTual:STARt", write=False)
    def trace_actual_start(self, c: Call):
        c.count(0, 1)
        return "1" if self._buffer(c, 0)[1].entries else "0"

    @scpi(":TRACe:ACTual:END", write=False)
    def trace_actual_end(self, c: Call):
        c.count(0, 1)
        return str(len(self._buffer(c, 0)[1].entries))

    @scpi(":TRACe:TRIGger", query=False)
    def trace_trigger(self, c: Call):
        c.count(0, 1)
        self._take(self._buffer(c, 0)[1])

    @scpi(":TRACe:DATA", write=False)
    def trace_data(self, c: Call):
        if len(c.params) < 2:
            raise ScpiError(-109, ":TRACe:DATA? needs <startIndex>, <endIndex>")
        _, buf = self._buffer(c, 2)
        n = len(buf.entries)
        start = int(c.number(0, nmax=len(c.params), minimum=1, maximum=max(n, 1), name="start index"))
        end = int(c.number(1, nmax=len(c.params), minimum=start, maximum=max(n, 1), name="end index"))
        if n == 0:
            raise ScpiError(-222, "the reading buffer is empty")
        elements = self._elements(c, 3)
        return ",".join(buf.format(r, elements, buf) for r in buf.entries[start - 1:end])

    def _statistic(self, c: Call, fn) -> str:
        c.count(0, 1)
        values = self._buffer(c, 0)[1].statistics_values()
        return fmt(float(fn(values))) if values.size else fmt(math.nan)

    @scpi(":TRACe:STATistics:AVERage", write=False)
    def trace_stat_average(self, c: Call):
        return self._statistic(c, np.mean)

    @scpi(":TRACe:STATistics:MAXimum", write=False)
    def trace_stat_maximum(self, c: Call):
        return self._statistic(c, np.max)

    @scpi(":TRACe:STATistics:MINimum", write=False)
    def trace_stat_minimum(self, c: Call):
        return self._statistic(c, np.min)

    @scpi(":TRACe:STATistics:PK2Pk", write=False)
    def trace_stat_pk2pk(self, c: Call):
        return self._statistic(c, np.ptp)

    @scpi(":TRACe:STATistics:STDDev", write=False)
    def trace_stat_stddev(self, c: Call):
        return self._statistic(c, lambda v: np.std(v, ddof=1) if v.size > 1 else 0.0)

    @scpi(":TRACe:STATistics:CLEar", query=False)
    def trace_stat_clear(self, c: Call):
        c.count(0, 1)
        self._buffer(c, 0)[1].clear_statistics()
