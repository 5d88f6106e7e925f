"""Keithley 2450 SourceMeter driver (SCPI command set) for cell reads: source V, measure I.

Settings are declarative (:class:`~drivers.instruments.scpi_property.InstrumentProperty`);
the methods combine them into what the bench needs: :meth:`Keithley2450.configure_read`
(voltage source with a current limit, fixed current range and NPLC, output-off state)
and :meth:`Keithley2450.read_current` (output on, ``:READ?``, output off, error count).
Commands are those of the 2450 reference manual (SCPI command set, not the 2400
emulation mode).
"""

from __future__ import annotations

import math
import re

from drivers.errors import InstrumentError
from drivers.instruments.scpi_property import IdentityError, InstrumentProperty, VisaInstrument, in_range, one_of

V_SOURCE_RANGES = (0.02, 0.2, 2.0, 20.0, 200.0)
I_RANGES = (10e-9, 100e-9, 1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3, 1.0)
OVERFLOW = 9.9e37
OFF_MODES = ("HIMP", "NORM", "ZERO", "GUAR")


def source_range_for(v: float) -> float:
    """The smallest 2450 voltage source range that holds ``v``."""
    for r in V_SOURCE_RANGES:
        if abs(v) <= r:
            return r
    raise ValueError(f"{v} V exceeds the 2450's 200 V range")


class Keithley2450(VisaInstrument):
    """A Keithley 2450 on any VISA resource (``*IDN?`` must report MODEL 2450)."""

    label = "Keithley 2450 SMU"
    expected_model = "Keithley 2450 SourceMeter (*IDN? ... MODEL 2450 ...)"
    idn_pattern = re.compile(r"KEITHLEY.*MODEL 2450\b", re.I)

    source_function = InstrumentProperty(":SOUR:FUNC?", ":SOUR:FUNC {}", kind=str,
                                         validator=one_of("VOLT", "CURR"), doc="source function")
    source_voltage = InstrumentProperty(":SOUR:VOLT?", ":SOUR:VOLT {}", units="V",
                                        validator=in_range(-210.0, 210.0), doc="source voltage level")
    source_voltage_range = InstrumentProperty(":SOUR:VOLT:RANG?", ":SOUR:VOLT:RANG {}", units="V",
                                              validator=in_range(0.0, 210.0), doc="voltage source range")
    current_limit = InstrumentProperty(":SOUR:VOLT:ILIM?", ":SOUR:VOLT:ILIM {}", units="A",
                                       validator=in_range(1e-9, 1.05), doc="current limit (compliance)")
    current_limit_tripped = InstrumentProperty(":SOUR:VOLT:ILIM:TRIP?", None, kind=bool, snapshot=False,
                                               doc="whether the last reading hit the current limit")
    sense_function = InstrumentProperty(":SENS:FUNC?", ':SENS:FUNC "{}"', kind=str,
                                        validator=one_of("CURR", "VOLT", "RES"), doc="measure function")
    current_range = InstrumentProperty(":SENS:CURR:RANG?", ":SENS:CURR:RANG {}", units="A",
                                       validator=in_range(1e-8, 1.05), doc="current measure range (fixed)")
    current_autorange = InstrumentProperty(":SENS:CURR:RANG:AUTO?", ":SENS:CURR:RANG:AUTO {}", kind=bool,
                                           doc="current measure auto range")
    current_nplc = InstrumentProperty(":SENS:CURR:NPLC?", ":SENS:CURR:NPLC {}", units="PLC",
                                      validator=in_range(0.01, 10.0), doc="integration time")
    current_autozero = InstrumentProperty(":SENS:CURR:AZER?", ":SENS:CURR:AZER {}", kind=bool,
                                          doc="auto zero of the current measurement (doubles its time)")
    output_enabled = InstrumentProperty(":OUTP?", ":OUTP {}", kind=bool, doc="output relay state")
    output_off_mode = InstrumentProperty(":OUTP:VOLT:SMOD?", ":OUTP:VOLT:SMOD {}", kind=str,
                                         validator=one_of(*OFF_MODES), doc="output-off state (voltage source)")
    terminals = InstrumentProperty(":ROUT:TERM?", ":ROUT:TERM {}", kind=str, validator=one_of("FRON", "REAR"),
                                   doc="front or rear terminals")
    error_count = InstrumentProperty(":SYST:ERR:COUN?", None, kind=int, doc="entries in the error queue",
                                     snapshot=False)

    def check_identity(self):
        """``*IDN?`` must name a 2450, and its command set (``*LANG?``) must be SCPI (not TSP or SCPI2400)."""
        identity = super().check_identity()
        lang = self.query("*LANG?").strip().strip('"').upper()
        if lang != "SCPI":
            raise IdentityError(f"the 2450 at {self.resource_name} runs the {lang or '?'} command set; this driver "
                                "speaks its SCPI command set: select SCPI (System > Settings > Command Set, or "
                                "*LANG SCPI) and restart the instrument")
        return identity

    def configure_read(self, *, voltage_v: float, current_range_a: float, compliance_a: float, nplc: float,
                       off_mode: str = "NORM", terminals: str = "FRON") -> None:
        """Voltage source at ``voltage_v`` (output off), current limit, fixed current range and NPLC.

        Every value is validated before the first command is written; the error queue
        is read afterwards and any entry raises :class:`InstrumentError`.
        """
        checks = [(type(self).source_voltage, voltage_v), (type(self).current_limit, compliance_a),
                  (type(self).current_range, current_range_a), (type(self).current_nplc, nplc),
                  (type(self).output_off_mode, off_mode), (type(self).terminals, terminals)]
        for prop, value in checks:
            prop.validator(f"{self.label} {prop.name}", value)
        self.output_enabled = False
        self.source_function = "VOLT"
        self.source_voltage_range = source_range_for(voltage_v)
        self.source_voltage = 0.0
        self.current_limit = float(compliance_a)
        self.sense_function = "CURR"
        self.current_range = float(current_range_a)
        self.current_nplc = float(nplc)
        self.output_off_mode = off_mode
        self.terminals = terminals
        self.source_voltage = float(voltage_v)
        self.check_errors("after configuring the read")

    def configure_dc(self, *, compliance_a: float, max_level_v: float, nplc: float) -> None:
        """Output off, voltage source at 0 V on the range that holds ``max_level_v``, current limit,
        current auto range, ``nplc`` and auto zero off (one reading lasts ``nplc`` line cycles).

        The current limit is read back and compared before this returns, so a caller that turns
        the output on next does so under the compliance it asked for; any difference or queued
        error raises :class:`InstrumentError`.  Everything is validated before the first write.
        """
        for prop, value in ((type(self).current_limit, compliance_a), (type(self).current_nplc, nplc),
                            (type(self).source_voltage, max_level_v)):
            prop.validator(f"{self.label} {prop.name}", value)
        self.output_enabled = False
        self.source_function = "VOLT"
        self.source_voltage = 0.0
        self.source_voltage_range = source_range_for(max_level_v)
        self.current_limit = float(compliance_a)
        self.current_autorange = True
        self.current_nplc = float(nplc)
        self.current_autozero = False
        self.check_errors("after configuring the DC source")
        got = self.current_limit
        if not math.isclose(got, compliance_a, rel_tol=1e-6):
            raise InstrumentError(f"{self.label}: asked for a {compliance_a:g} A current limit, the instrument "
                                  f"reports {got:g} A; the output stays off")
        if self.output_enabled:
            raise InstrumentError(f"{self.label}: the output is on after configuring the DC source")

    def read_at(self, voltage_v: float) -> float:
        """Set the source level (the output state is the caller's) and take one current reading (A)."""
        self.source_voltage = float(voltage_v)
        return self.read_current(switch_output=False)

    def read_current(self, switch_output: bool = True) -> float:
        """One current reading (A) at the programmed voltage; the output is on only for the reading.

        An over-range reading (``9.9E+37``) is returned as +-inf.  Raises
        :class:`InstrumentError` if the instrument queued any error meanwhile (the error
        queue is checked after every reading) or the reply is not a number.
        """
        if switch_output:
            self.write(":OUTP ON")
        try:
            reply = self.query(":READ?")
        finally:
            if switch_output:
                self.write(":OUTP OFF")
        if self.error_count:
            self.check_errors("during a reading")
        try:
            value = float(reply.split(",")[0])
        except ValueError:
            raise InstrumentError(f"{self.label} answered :READ? with {reply!r}") from None
        if not math.isfinite(value):
            raise InstrumentError(f"{self.label} returned a non-finite reading {reply!r}")
        if abs(value) >= OVERFLOW * 0.999:
            return math.copysign(math.inf, value)  # over range: the caller decides how to clip
        return value

    def output_off(self, confirm: bool = False) -> None:
        """Output off; with ``confirm``, return only once the instrument has executed it (``*OPC?``)."""
        self.output_enabled = False
        if confirm:
            self.operation_complete()

    def shutdown(self) -> None:
        """Output off and source level to zero (safe idle), confirmed by ``*OPC?``."""
        self.output_enabled = False
        self.source_voltage = 0.0
        self.operation_complete()
