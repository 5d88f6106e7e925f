"""Keysight 33500B-series waveform generator driver, used as a bus-triggered pulse source.

The pulse output idles at the low level (0 V) between bursts: function ``PULS``,
``OUTP:LOAD INF`` (so the programmed level is the open-circuit voltage the devices
see), voltage limits ``VOLT:LIM:HIGH/LOW`` with ``VOLT:LIM:STAT ON`` as a second line
of defence, ``BURS:MODE TRIG`` with ``BURS:NCYC`` pulses per trigger and
``TRIG:SOUR BUS``; :meth:`Keysight33500B.fire_burst` sends ``*TRG``, waits for
``*OPC?`` and reads the error queue.  All commands address the configured channel
(``SOUR{ch}:``, ``OUTP{ch}``, ``TRIG{ch}:``).
"""

from __future__ import annotations

import math
import re

from drivers.errors import InstrumentError, LimitViolation
from drivers.instruments.scpi_property import InstrumentProperty, VisaInstrument, in_range, one_of

MIN_WIDTH_SEC = 16e-9
MIN_EDGE_SEC = 8.4e-9
MAX_OPEN_CIRCUIT_V = 10.0  # into a high-impedance load
MAX_BURST = 100_000_000


def _parse_load(text: str) -> float:
    v = float(text)
    return math.inf if v >= 9.9e37 else v


class Keysight33500B(VisaInstrument):
    """A 33500B-series generator (``*IDN?`` model 335xxB) driving its channel ``channel``."""

    label = "Keysight 33500B pulse generator"
    expected_model = "Keysight/Agilent 33500B-series waveform generator (*IDN? model 335xxB)"
    idn_pattern = re.compile(r"(Keysight|Agilent)[^,]*,\s*335\d\dB\b", re.I)

    function = InstrumentProperty("SOUR{ch}:FUNC?", "SOUR{ch}:FUNC {}", kind=str,
                                  validator=one_of("SIN", "SQU", "TRI", "RAMP", "PULS", "PRBS", "NOIS", "ARB", "DC"))
    pulse_period = InstrumentProperty("SOUR{ch}:FUNC:PULS:PER?", "SOUR{ch}:FUNC:PULS:PER {}", units="s",
                                      validator=in_range(33e-9, 1e6), doc="pulse period")
    pulse_width = InstrumentProperty("SOUR{ch}:FUNC:PULS:WIDT?", "SOUR{ch}:FUNC:PULS:WIDT {}", units="s",
                                     validator=in_range(MIN_WIDTH_SEC, 1e6), doc="pulse width")
    edge_time = InstrumentProperty("SOUR{ch}:FUNC:PULS:TRAN?", "SOUR{ch}:FUNC:PULS:TRAN {}", units="s",
                                   validator=in_range(MIN_EDGE_SEC, 1e-6), doc="leading and trailing edge time")
    high_level = InstrumentProperty("SOUR{ch}:VOLT:HIGH?", "SOUR{ch}:VOLT:HIGH {}", units="V",
                                    validator=in_range(-MAX_OPEN_CIRCUIT_V, MAX_OPEN_CIRCUIT_V), doc="pulse level")
    low_level = InstrumentProperty("SOUR{ch}:VOLT:LOW?", "SOUR{ch}:VOLT:LOW {}", units="V",
                                   validator=in_range(-MAX_OPEN_CIRCUIT_V, MAX_OPEN_CIRCUIT_V), doc="idle level")
    limit_high = InstrumentProperty("SOUR{ch}:VOLT:LIM:HIGH?", "SOUR{ch}:VOLT:LIM:HIGH {}", units="V",
                                    validator=in_range(-MAX_OPEN_CIRCUIT_V, MAX_OPEN_CIRCUIT_V))
    limit_low = InstrumentProperty("SOUR{ch}:VOLT:LIM:LOW?", "SOUR{ch}:VOLT:LIM:LOW {}", units="V",
                                   validator=in_range(-MAX_OPEN_CIRCUIT_V, MAX_OPEN_CIRCUIT_V))
    limits_enabled = InstrumentProperty("SOUR{ch}:VOLT:LIM:STAT?", "SOUR{ch}:VOLT:LIM:STAT {}", kind=bool)
    load = InstrumentProperty("OUTP{ch}:LOAD?", "OUTP{ch}:LOAD {}", kind=str, parse=_parse_load,
                              validator=one_of("INF", "50"), doc="load the levels are computed for")
    output_enabled = InstrumentProperty("OUTP{ch}?", "OUTP{ch} {}", kind=bool)
    polarity = InstrumentProperty("OUTP{ch}:POL?", "OUTP{ch}:POL {}", kind=str, validator=one_of("NORM", "INV"))
    burst_enabled = InstrumentProperty("SOUR{ch}:BURS:STAT?", "SOUR{ch}:BURS:STAT {}", kind=bool)
    burst_mode = InstrumentProperty("SOUR{ch}:BURS:MODE?", "SOUR{ch}:BURS:MODE {}", kind=str,
                                    validator=one_of("TRIG", "GAT"))
    burst_cycles = InstrumentProperty("SOUR{ch}:BURS:NCYC?", "SOUR{ch}:BURS:NCYC {}", kind=int,
                                      validator=in_range(1, MAX_BURST), doc="pulses per trigger")
    trigger_source = InstrumentProperty("TRIG{ch}:SOUR?", "TRIG{ch}:SOUR {}", kind=str,
                                        validator=one_of("IMM", "EXT", "TIM", "BUS"))

    def __init__(self, *args, channel: int = 1, **kw):
        if channel not in (1, 2):
            raise ValueError("33500B channel must be 1 or 2")
        super().__init__(*args, channel=channel, **kw)
        self._state: dict[str, float] = {}

    def configure_pulser(self, *, limit_high_v: float, edge_time_sec: float = MIN_EDGE_SEC) -> None:
        """Output off; pulse function into a high-Z load idling at 0 V; limits on; bus-triggered bursts."""
        type(self).limit_high.validator(f"{self.label} limit_high", limit_high_v)
        type(self).edge_time.validator(f"{self.label} edge_time", edge_time_sec)
        if not limit_high_v > 0:
            raise LimitViolation(f"{self.label}: the high voltage limit must be positive")
        self.output_enabled = False
        self.load = "INF"
        self.function = "PULS"
        self.low_level = 0.0
        self.limit_high = float(limit_high_v)
        self.limit_low = 0.0
        self.edge_time = float(edge_time_sec)
        self.burst_mode = "TRIG"
        self.burst_cycles = 1
        self.burst_enabled = True
        self.trigger_source = "BUS"
        self.check_errors("after configuring the pulser")
        self._state = {"high": self.high_level, "low": 0.0, "width": self.pulse_width,
                       "period": self.pulse_period, "cycles": 1.0}
        self.limits_enabled = True
        self.check_errors("after enabling the voltage limits")

    def set_pulse(self, level_v: float, width_sec: float, period_sec: float) -> None:
        """Pulse level (V above the 0 V idle), width and period; writes only what changed, in a legal order."""
        type(self).high_level.validator(f"{self.label} high_level", level_v)
        type(self).pulse_width.validator(f"{self.label} pulse_width", width_sec)
        type(self).pulse_period.validator(f"{self.label} pulse_period", period_sec)
        if not level_v > 0:
            raise LimitViolation(f"{self.label}: pulse level must be above the 0 V idle level")
        if width_sec > period_sec - MIN_WIDTH_SEC:
            raise LimitViolation(f"{self.label}: a {width_sec:g} s pulse does not fit a {period_sec:g} s period")
        s = self._state
        changed = s.get("high") != level_v or s.get("width") != width_sec or s.get("period") != period_sec
        if s.get("high") != level_v:
            self.high_level = float(level_v)
            s["high"] = level_v
        # width and period are coupled (width < period): shrink first what must shrink
        if s.get("width") != width_sec or s.get("period") != period_sec:
            if width_sec <= s.get("width", math.inf):
                self.pulse_width = float(width_sec)
                self.pulse_period = float(period_sec)
            else:
                self.pulse_period = float(period_sec)
                self.pulse_width = float(width_sec)
            s["width"], s["period"] = width_sec, period_sec
        if changed:  # a setting the instrument refused must stop us before a burst fires at the old one
            try:
                self.check_errors("after setting the pulse")
            except InstrumentError:
                self._state = {}
                raise

    def fire_burst(self, cycles: int) -> None:
        """``cycles`` pulses: *TRG, wait for completion (*OPC?), then the error queue must be empty."""
        type(self).burst_cycles.validator(f"{self.label} burst_cycles", cycles)
        if self._state.get("cycles") != cycles:
            self.burst_cycles = int(cycles)
            self._state["cycles"] = cycles
        self.write("*TRG")
        self.operation_complete()
        code, text = self.next_error()
        if code != 0:
            more = self.errors()
            listing = "; ".join(f"{c},{t!r}" for c, t in [(code, text)] + more)
            raise InstrumentError(f"{self.label} at {self.resource_name} reported {listing} during a burst",
                                  code=code)

    def output_off(self, confirm: bool = False) -> None:
        """Output off; with ``confirm``, return only once the instrument has executed it (``*OPC?``)."""
        self.output_enabled = False
        if confirm:
            self.operation_complete()

    def shutdown(self) -> None:
        """Output off (safe idle), confirmed by ``*OPC?``."""
        self.output_off(confirm=True)
