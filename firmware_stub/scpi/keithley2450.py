"""Keithley 2450 SourceMeter (SCPI command set), emulated on the shared bench.

The documented commands this stack and common third-party drivers (pymeasure's
``Keithley2450``) use: source function, level, range and limit (compliance) for
voltage and current, sense function, range, auto range and NPLC, output state and
output-off mode, ``:READ?`` / ``:MEASure?`` / ``:FETCh?``, the limit-tripped query,
terminals, and the standard SCPI system subsystem.  A measurement takes its real
duration on the virtual clock (NPLC / 50 Hz plus overhead); readings are quantised to
6.5 digits of the selected range; an over-range reading is ``9.9E+37``.

With the output off, no voltage reaches the devices: a reading then shows the
noise floor (zero).  The output-off state (``NORMal``, ``HIMPedance``, ``ZERO``,
``GUARd``) is stored and reported but behaves as "nothing driven" for the devices.
"""

from __future__ import annotations

from firmware_stub.scpi.instrument import Call, ScpiInstrument, fmt, scpi
from protocols.scpi import SCPI_INF, ScpiError

V_SOURCE_RANGES = (0.02, 0.2, 2.0, 20.0, 200.0)
I_RANGES = (10e-9, 100e-9, 1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3, 1.0)
V_MEAS_RANGES = (0.02, 0.2, 2.0, 20.0, 200.0)
R_RANGES = (20.0, 200.0, 2e3, 20e3, 200e3, 2e6, 20e6, 200e6)
LINE_FREQUENCY_HZ = 50.0
MEASURE_OVERHEAD_S = 0.5e-3

_FUNCS = {"VOLTage": "VOLT", "CURRent": "CURR"}
_SENSE_FUNCS = {"CURRent": "CURR", "VOLTage": "VOLT", "RESistance": "RES", "CURRent:DC": "CURR",
                "VOLTage:DC": "VOLT"}
_SMODES = {"HIMPedance": "HIMP", "NORMal": "NORM", "ZERO": "ZERO", "GUARd": "GUAR"}


def _pick_range(ranges: tuple[float, ...], value: float) -> float:
    for r in ranges:
        if abs(value) <= r * (1 + 1e-9):
            return r
    raise ScpiError(-222, f"{value:g} exceeds the largest range {ranges[-1]:g}")


class Keithley2450(ScpiInstrument):
    kind = "smu"
    manufacturer = "KEITHLEY INSTRUMENTS"
    model = "MODEL 2450"
    firmware = "1.7.12b"
    error_queue_size = 32

    def reset(self) -> None:
        self.source_func = "VOLT"
        self.level = {"VOLT": 0.0, "CURR": 0.0}
        self.source_range = {"VOLT": 0.02, "CURR": 1e-8}
        self.source_autorange = {"VOLT": True, "CURR": True}
        self.ilim = 1.05e-4
        self.vlim = 21.0
        self.source_delay = {"VOLT": 0.0, "CURR": 0.0}
        self.source_delay_auto = {"VOLT": True, "CURR": True}
        self.readback = True
        self.ovp = "NONE"
        self.sense_func = "CURR"
        self.sense_range = {"CURR": 1e-4, "VOLT": 20.0, "RES": 200e3}
        self.sense_autorange = {"CURR": True, "VOLT": True, "RES": True}
        self.nplc = {"CURR": 1.0, "VOLT": 1.0, "RES": 1.0}
        self.azero = {"CURR": True, "VOLT": True, "RES": True}
        self.average = {"CURR": [False, 10, "REP"], "VOLT": [False, 10, "REP"], "RES": [False, 10, "REP"]}
        self.rsense = False
        self.output = False
        self.off_mode = {"VOLT": "NORM", "CURR": "NORM"}
        self.terminals = "FRON"
        self.tripped = False
        self.last_reading = 0.0
        self.last_source_reading = 0.0

    def common(self, unit):
        if unit.header.upper() == "*LANG":
            if unit.query:
                return "SCPI"
            raise ScpiError(-221, "this emulated 2450 speaks the SCPI command set only")
        return super().common(unit)

    # ---- safety hooks -----------------------------------------------------------------------------
    def outputs_off(self) -> None:
        self.output = False

    def driven_level_v(self) -> float:
        if not self.output:
            return 0.0
        return self.level["VOLT"] if self.source_func == "VOLT" else self.vlim * (self.level["CURR"] != 0)

    # ---- source ---------------------------------------------------------------------------------------
    @scpi("[:SOURce#]:FUNCtion[:MODE]")
    def source_function(self, c: Call):
        c.suffix(0)
        if c.query:
            return self.source_func
        c.count(1)
        func = c.choice(0, _FUNCS)
        if func != self.source_func and self.output:
            self.output = False  # the 2450 turns the output off when the source function changes
        self.source_func = func

    def _level(self, c: Call, func: str):
        c.suffix(0)
        if c.query:
            return fmt(self.level[func])
        c.count(1)
        top = 210.0 if func == "VOLT" else 1.05
        value = c.number(0, minimum=-top, maximum=top, default=0.0, name=f"source {func.lower()}")
        if self.source_autorange[func]:
            self.source_range[func] = _pick_range(V_SOURCE_RANGES if func == "VOLT" else I_RANGES, value)
        elif abs(value) > self.source_range[func] * 1.05:
            raise ScpiError(-222, f"source level {value:g} exceeds the {self.source_range[func]:g} range")
        self.level[func] = value

    @scpi("[:SOURce#]:VOLTage[:LEVel][:IMMediate][:AMPLitude]")
    def source_voltage(self, c: Call):
        return self._level(c, "VOLT")

    @scpi("[:SOURce#]:CURRent[:LEVel][:IMMediate][:AMPLitude]")
    def source_current(self, c: Call):
        return self._level(c, "CURR")

    def _source_range(self, c: Call, func: str):
        c.suffix(0)
        if c.query:
            return fmt(self.source_range[func])
        ranges = V_SOURCE_RANGES if func == "VOLT" else I_RANGES
        value = c.number(0, minimum=-ranges[-1], maximum=ranges[-1], name="source range")
        rng = _pick_range(ranges, value)
        if abs(self.level[func]) > rng * 1.05:
            raise ScpiError(-221, f"source level {self.level[func]:g} does not fit the {rng:g} range")
        self.source_range[func] = rng
        self.source_autorange[func] = False

    @scpi("[:SOURce#]:VOLTage:RANGe")
    def source_voltage_range(self, c: Call):
        return self._source_range(c, "VOLT")

    @scpi("[:SOURce#]:CURRent:RANGe")
    def source_current_range(self, c: Call):
        return self._source_range(c, "CURR")

    def _source_autorange(self, c: Call, func: str):
        c.suffix(0)
        if c.query:
            return "1" if self.source_autorange[func] else "0"
        self.source_autorange[func] = c.boolean(0)

    @scpi("[:SOURce#]:VOLTage:RANGe:AUTO")
    def source_voltage_autorange(self, c: Call):
        return self._source_autorange(c, "VOLT")

    @scpi("[:SOURce#]:CURRent:RANGe:AUTO")
    def source_current_autorange(self, c: Call):
        return self._source_autorange(c, "CURR")

    @scpi("[:SOURce#]:VOLTage:ILIMit[:LEVel]")
    def current_limit(self, c: Call):
        c.suffix(0)
        if c.query:
            return fmt(self.ilim)
        self.ilim = c.number(0, minimum=1e-9, maximum=1.05, default=1.05e-4, name="current limit")

    @scpi("[:SOURce#]:VOLTage:ILIMit[:LEVel]:TRIPped", write=False)
    def current_limit_tripped(self, c: Call):
        return "1" if (self.tripped and self.source_func == "VOLT") else "0"

    @scpi("[:SOURce#]:CURRent:VLIMit[:LEVel]")
    def voltage_limit(self, c: Call):
        c.suffix(0)
        if c.query:
            return fmt(self.vlim)
        self.vlim = c.number(0, minimum=0.02, maximum=210.0, default=21.0, name="voltage limit")

    @scpi("[:SOURce#]:CURRent:VLIMit[:LEVel]:TRIPped", write=False)
    def voltage_limit_tripped(self, c: Call):
        return "1" if (self.tripped and self.source_func == "CURR") else "0"

    def _delay(self, c: Call, func: str):
        if c.query:
            return fmt(self.source_delay[func])
        self.source_delay[func] = c.number(0, minimum=0.0, maximum=10e3, name="source delay")
        self.source_delay_auto[func] = False

    @scpi("[:SOURce#]:VOLTage:DELay")
    def voltage_delay(self, c: Call):
        return self._delay(c, "VOLT")

    @scpi("[:SOURce#]:CURRent:DELay")
    def current_delay(self, c: Call):
        return self._delay(c, "CURR")

    def _delay_auto(self, c: Call, func: str):
        if c.query:
            return "1" if self.source_delay_auto[func] else "0"
        self.source_delay_auto[func] = c.boolean(0)

    @scpi("[:SOURce#]:VOLTage:DELay:AUTO")
    def voltage_delay_auto(self, c: Call):
        return self._delay_auto(c, "VOLT")

    @scpi("[:SOURce#]:CURRent:DELay:AUTO")
    def current_delay_auto(self, c: Call):
        return self._delay_auto(c, "CURR")

    @scpi("[:SOURce#]:VOLTage:READ:BACK")
    def readback_state(self, c: Call):
        if c.query:
            return "1" if self.readback else "0"
        self.readback = c.boolean(0)

    @scpi("[:SOURce#]:VOLTage:PROTection[:LEVel]")
    def overvoltage_protection(self, c: Call):
        if c.query:
            return self.ovp
        c.count(1)
        value = c.params[0].strip().upper()
        valid = {"NONE"} | {f"PROT{v}" for v in (2, 5, 10, 20, 40, 60, 80, 100, 120, 140, 160, 180)}
        if value not in valid:
            raise ScpiError(-224, f"overvoltage protection {value}")
        self.ovp = value

    # ---- sense ----------------------------------------------------------------------------------------
    @scpi("[:SENSe#]:FUNCtion[:ON]")
    def sense_function(self, c: Call):
        c.suffix(0)
        if c.query:
            return {"CURR": '"CURR:DC"', "VOLT": '"VOLT:DC"', "RES": '"RES"'}[self.sense_func]
        c.count(1)
        self.sense_func = c.choice(0, _SENSE_FUNCS)

    def _sense(self, c: Call, func: str, what: str):
        c.suffix(0)
        if what == "range":
            ranges = {"CURR": I_RANGES, "VOLT": V_MEAS_RANGES, "RES": R_RANGES}[func]
            if c.query:
                return fmt(self.sense_range[func])
            value = c.number(0, minimum=-ranges[-1] * 1.05, maximum=ranges[-1] * 1.05, name="measure range")
            self.sense_range[func] = _pick_range(ranges, min(abs(value), ranges[-1]))
            self.sense_autorange[func] = False
        elif what == "auto":
            if c.query:
                return "1" if self.sense_autorange[func] else "0"
            self.sense_autorange[func] = c.boolean(0)
        elif what == "nplc":
            if c.query:
                return fmt(self.nplc[func])
            self.nplc[func] = c.number(0, minimum=0.01, maximum=10.0, default=1.0, name="NPLC")
        elif what == "azero":
            if c.query:
                return "1" if self.azero[func] else "0"
            self.azero[func] = c.boolean(0)
        elif what.startswith("aver"):
            avg = self.average[func]
            if what == "aver":
                if c.query:
                    return "1" if avg[0] else "0"
                avg[0] = c.boolean(0)
            elif what == "avercount":
                if c.query:
                    return str(avg[1])
                avg[1] = int(c.number(0, minimum=1, maximum=100, name="filter count"))
            else:
                if c.query:
                    return avg[2]
                avg[2] = c.choice(0, {"REPeat": "REP", "MOVing": "MOV"})
        return None

    def _register_sense():  # noqa: N805 -- builds methods at class creation
        out = {}
        for func, long in (("CURR", "CURRent"), ("VOLT", "VOLTage"), ("RES", "RESistance")):
            for what, tail in (("range", ":RANGe[:UPPer]"), ("auto", ":RANGe:AUTO"), ("nplc", ":NPLCycles"),
                               ("azero", ":AZERo[:STATe]"), ("aver", ":AVERage[:STATe]"),
                               ("avercount", ":AVERage:COUNt"), ("avertcon", ":AVERage:TCONtrol")):
                def handler(self, c, _f=func, _w=what):
                    return self._sense(c, _f, _w)
                handler.__name__ = f"sense_{func.lower()}_{what}"
                scpi(f"[:SENSe#]:{long}{tail}")(handler)
                out[handler.__name__] = handler
        return out

    locals().update(_register_sense())
    del _register_sense

    @scpi("[:SENSe#]:RESistance:RSENse")
    def remote_sense(self, c: Call):
        if c.query:
            return "1" if self.rsense else "0"
        self.rsense = c.boolean(0)

    # ---- output ------------------------------------------------------------------------------------------
    @scpi(":OUTPut#[:STATe]")
    def output_state(self, c: Call):
        c.suffix(0)
        if c.query:
            return "1" if self.output else "0"
        c.count(1)
        self.output = c.boolean(0)

    def _smode(self, c: Call, func: str):
        c.suffix(0)
        if c.query:
            return self.off_mode[func]
        c.count(1)
        self.off_mode[func] = c.choice(0, _SMODES)

    @scpi(":OUTPut#:VOLTage:SMODe")
    def output_off_mode_voltage(self, c: Call):
        return self._smode(c, "VOLT")

    @scpi(":OUTPut#:CURRent:SMODe")
    def output_off_mode_current(self, c: Call):
        return self._smode(c, "CURR")

    @scpi(":ROUTe:TERMinals")
    def terminals_select(self, c: Call):
        if c.query:
            return self.terminals
        self.terminals = c.choice(0, {"FRONt": "FRON", "REAR": "REAR"})

    # ---- measurement ------------------------------------------------------------------------------------
    def _integration_s(self) -> float:
        n = self.nplc[self.sense_func]
        return n / LINE_FREQUENCY_HZ * (2.0 if self.azero[self.sense_func] else 1.0) + MEASURE_OVERHEAD_S

    def measure(self) -> float:
        """One reading of the sense function (the source acts only while the output is on)."""
        t = self._integration_s()
        bench = self.bench
        before = bench.array.clock_s
        func = self.sense_func
        current, voltage = 0.0, 0.0
        self.tripped = False
        if self.output:
            if self.source_func == "VOLT":
                voltage = self.level["VOLT"]
                rng = None if self.sense_autorange["CURR"] else self.sense_range["CURR"]
                current, self.tripped = bench.smu_source_voltage(voltage, self.ilim, t, rng)
            else:
                voltage, current, self.tripped = bench.smu_source_current(self.level["CURR"], self.vlim, t)
        bench.advance(max(0.0, t - (bench.array.clock_s - before)))
        if func == "CURR":
            value = current
            if self.sense_autorange["CURR"]:
                rng = _pick_range(I_RANGES, min(abs(value), I_RANGES[-1]))
                self.sense_range["CURR"] = max(rng, I_RANGES[0])
                value = round(value / (rng * 1e-6)) * rng * 1e-6
            elif abs(value) > self.sense_range["CURR"] * 1.05:
                value = SCPI_INF
        elif func == "VOLT":
            value = voltage
        else:
            value = abs(voltage / current) if current else SCPI_INF
        self.last_reading = value
        self.last_source_reading = voltage if self.source_func == "VOLT" else current
        return value

    @scpi(":READ", write=False)
    def read(self, c: Call):
        # ':READ? ["buffer"[, elements...]]': the buffer name is accepted; elements READ/SOUR honoured
        value = self.measure()
        elements = [e.strip().upper() for e in c.params[1:]] or ["READ"]
        out = []
        for e in elements:
            if e.startswith("READ"):
                out.append(fmt(value))
            elif e.startswith("SOUR"):
                out.append(fmt(self.last_source_reading))
            elif e.startswith("REL"):
                out.append("0.000000E+00")
            else:
                raise ScpiError(-224, f"buffer element {e}")
        return ",".join(out)

    @scpi(":FETCh", write=False)
    def fetch(self, c: Call):
        return fmt(self.last_reading)

    @scpi(":MEASure[:CURRent][:DC]", write=False)
    def measure_current(self, c: Call):
        self.sense_func = "CURR"
        return fmt(self.measure())

    @scpi(":MEASure:VOLTage[:DC]", write=False)
    def measure_voltage(self, c: Call):
        self.sense_func = "VOLT"
        return fmt(self.measure())

    @scpi(":MEASure:RESistance", write=False)
    def measure_resistance(self, c: Call):
        self.sense_func = "RES"
        return fmt(self.measure())

    # ---- trigger model (minimal) -------------------------------------------------------------------------------
    @scpi(":ABORt", query=False)
    def abort(self, c: Call):
        return None

    @scpi(":INITiate[:IMMediate]", query=False)
    def initiate(self, c: Call):
        self.measure()

    @scpi(":SYSTem:LFRequency", write=False)
    def line_frequency(self, c: Call):
        return str(int(LINE_FREQUENCY_HZ))

    @scpi(":SYSTem:CLEar", query=False)
    def system_clear(self, c: Call):
        self.clear_status()

