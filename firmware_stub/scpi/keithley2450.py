"""Keithley 2450 SourceMeter (SCPI command set), emulated on the shared bench.

The documented commands this stack and common third-party drivers (pymeasure's and
QCoDeS's ``Keithley2450``) use: source function, level, range, delays, read-back and
limit (compliance) for voltage and current, sense function, range, auto range, NPLC,
auto zero, remote sense, user delays and count, output state and output-off mode,
``:READ?`` / ``:MEASure?`` / ``:FETCh?`` with a buffer name and buffer elements, the
limit-tripped query, terminals, the reading buffers (``:TRACe:MAKE/DELete/CLEar/
POINts/ACTual/DATA?/TRIGger/STATistics``; defbuffer1 and defbuffer2 hold 100,000
readings and fill continuously), the linear sweeps (``:SOURce:SWEep:<function>:LINear
[:STEP]`` then ``:INITiate``: the sweep clears its buffer, turns the output on -- and
leaves it on, as the generated trigger model does --, and at each point sets the
level, waits the sweep delay plus the source delay and takes one reading into the
buffer, stopping at a tripped limit when ``failAbort`` is ON; infinite sweeps are
refused), and the standard SCPI system subsystem.  A measurement takes its real
duration on the virtual clock (NPLC / 50 Hz plus overhead); readings are quantised to
6.5 digits of the selected range; an over-range reading is ``9.9E+37``.

With the output off, no voltage reaches the devices: a reading then shows the
noise floor (zero).  The output-off state (``NORMal``, ``HIMPedance``, ``ZERO``,
``GUARd``) is stored and reported but behaves as "nothing driven" for the devices.
"""

from __future__ import annotations

import math

import numpy as np

from firmware_stub.scpi.instrument import Call, ScpiInstrument, fmt, scpi
from firmware_stub.scpi.keithley2450_buffers import ReadingBufferCommands
from firmware_stub.scpi.reading_buffer import (
    DEFAULT_BUFFER_POINTS,
    DEFAULT_BUFFERS,
    MAX_BUFFER_POINTS,
    ReadingBuffer,
)
from firmware_stub.scpi.settings import BOOLEAN, CHOICE, INTEGER, NUMBER, Setting
from protocols.scpi import SCPI_INF, ScpiError, unquote

V_SOURCE_RANGES = (0.02, 0.2, 2.0, 20.0, 200.0)
I_RANGES = (10e-9, 100e-9, 1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3, 1.0)
V_MEAS_RANGES = (0.02, 0.2, 2.0, 20.0, 200.0)
R_RANGES = (20.0, 200.0, 2e3, 20e3, 200e3, 2e6, 20e6, 200e6)
LINE_FREQUENCY_HZ = 50.0
MEASURE_OVERHEAD_SEC = 0.5e-3

_FUNCS = {"VOLTage": "VOLT", "CURRent": "CURR"}
_SENSE_FUNCS = {"CURRent": "CURR", "VOLTage": "VOLT", "RESistance": "RES", "CURRent:DC": "CURR",
                "VOLTage:DC": "VOLT"}
_SMODES = {"HIMPedance": "HIMP", "NORMal": "NORM", "ZERO": "ZERO", "GUARd": "GUAR"}


def _pick_range(ranges: tuple[float, ...], value: float) -> float:
    for r in ranges:
        if abs(value) <= r * (1 + 1e-9):
            return r
    raise ScpiError(-222, f"{value:g} exceeds the largest range {ranges[-1]:g}")

_SENSE_NODES = (("CURR", "CURRent"), ("VOLT", "VOLTage"), ("RES", "RESistance"))


def _settings() -> tuple[Setting, ...]:
    """The 2450's plain settings (no side effects), in the order their headers are matched."""
    out = []
    for func, long in (("VOLT", "VOLTage"), ("CURR", "CURRent")):
        out.append(Setting(f"[:SOURce#]:{long}:RANGe:AUTO", "source_autorange", BOOLEAN, key=func, holder="_channel"))
    out += [
        Setting("[:SOURce#]:VOLTage:ILIMit[:LEVel]", "ilim", NUMBER, minimum=1e-9, maximum=1.05, default=1.05e-4,
                label="current limit", unit="A", holder="_channel"),
        Setting("[:SOURce#]:CURRent:VLIMit[:LEVel]", "vlim", NUMBER, minimum=0.02, maximum=210.0, default=21.0,
                label="voltage limit", unit="V", holder="_channel"),
    ]
    for func, long in (("VOLT", "VOLTage"), ("CURR", "CURRent")):
        out.append(Setting(f"[:SOURce#]:{long}:DELay:AUTO", "source_delay_auto", BOOLEAN, key=func))
    for func, long in (("VOLT", "VOLTage"), ("CURR", "CURRent")):
        out.append(Setting(f"[:SOURce#]:{long}:READ:BACK", "readback", BOOLEAN, key=func))
    for func, long in _SENSE_NODES:
        head = f"[:SENSe#]:{long}"
        out += [
            Setting(f"{head}:RANGe:AUTO", "sense_autorange", BOOLEAN, key=func, holder="_channel"),
            Setting(f"{head}:NPLCycles", "nplc", NUMBER, key=func, minimum=0.01, maximum=10.0, default=1.0,
                    label="NPLC", unit="PLC", holder="_channel"),
            Setting(f"{head}:AZERo[:STATe]", "azero", BOOLEAN, key=func, holder="_channel"),
            Setting(f"{head}:AVERage[:STATe]", "average_on", BOOLEAN, key=func, holder="_channel"),
            Setting(f"{head}:AVERage:COUNt", "average_count", INTEGER, key=func, minimum=1, maximum=100,
                    label="filter count", holder="_channel"),
            Setting(f"{head}:AVERage:TCONtrol", "average_tcontrol", CHOICE, key=func,
                    choices={"REPeat": "REP", "MOVing": "MOV"}, holder="_channel"),
            Setting(f"{head}:RSENse", "rsense", BOOLEAN, key=func, holder="_channel"),
        ]
    out += [
        Setting("[:SENSe#]:COUNt", "sense_count", INTEGER, minimum=1, maximum=300000, default=1,
                label="measure count"),
        Setting(":OUTPut#[:STATe]", "output", BOOLEAN, holder="_channel"),
        Setting(":OUTPut#:VOLTage:SMODe", "off_mode", CHOICE, key="VOLT", choices=_SMODES, holder="_channel"),
        Setting(":OUTPut#:CURRent:SMODe", "off_mode", CHOICE, key="CURR", choices=_SMODES, holder="_channel"),
        Setting(":ROUTe:TERMinals", "terminals", CHOICE, choices={"FRONt": "FRON", "REAR": "REAR"}),
    ]
    return tuple(out)


class Keithley2450(ReadingBufferCommands, ScpiInstrument):
    kind = "smu"
    manufacturer = "KEITHLEY INSTRUMENTS"
    model = "MODEL 2450"
    firmware = "1.7.12b"
    error_queue_size = 32
    settings = _settings()

    def reset(self) -> None:
        self.source_func = "VOLT"
        self.level = {"VOLT": 0.0, "CURR": 0.0}
        self.source_range = {"VOLT": 0.02, "CURR": 1e-8}
        self.source_autorange = {"VOLT": True, "CURR": True}
        self.ilim = 1.05e-4
        self.vlim = 21.0
        self.source_delay = {"VOLT": 0.0, "CURR": 0.0}
        self.source_delay_auto = {"VOLT": True, "CURR": True}
        self.readback = {"VOLT": True, "CURR": True}
        self.source_user_delay = {(f, n): 0.0 for f in ("VOLT", "CURR") for n in range(1, 6)}
        self.sense_user_delay = {(f, n): 0.0 for f in ("CURR", "VOLT", "RES") for n in range(1, 6)}
        self.sense_count = 1
        self.sweep: dict | None = None
        self.buffers = {name: ReadingBuffer(DEFAULT_BUFFER_POINTS) for name in DEFAULT_BUFFERS}
        self.ovp = "NONE"
        self.sense_func = "CURR"
        self.sense_range = {"CURR": 1e-4, "VOLT": 20.0, "RES": 200e3}
        self.sense_autorange = {"CURR": True, "VOLT": True, "RES": True}
        self.nplc = {"CURR": 1.0, "VOLT": 1.0, "RES": 1.0}
        self.azero = {"CURR": True, "VOLT": True, "RES": True}
        self.average_on = {"CURR": False, "VOLT": False, "RES": False}
        self.average_count = {"CURR": 10, "VOLT": 10, "RES": 10}
        self.average_tcontrol = {"CURR": "REP", "VOLT": "REP", "RES": "REP"}
        self.rsense = {"CURR": False, "VOLT": False, "RES": False}
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

    def _channel(self, c: Call) -> "Keithley2450":
        """The instrument itself, once the header's numeric suffix is checked (one source, one sense)."""
        c.suffix(0)
        return self

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

    @scpi("[:SOURce#]:VOLTage:ILIMit[:LEVel]:TRIPped", write=False)
    def current_limit_tripped(self, c: Call):
        return "1" if (self.tripped and self.source_func == "VOLT") else "0"

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

    def _user_delay(self, c: Call, table: dict, func: str, node: int):
        n = c.suffix(node, (1, 2, 3, 4, 5))
        if c.query:
            return fmt(table[(func, n)])
        table[(func, n)] = c.number(0, minimum=0.0, maximum=10e3, name="user delay")

    @scpi("[:SOURce#]:VOLTage:DELay:USER#")
    def source_voltage_user_delay(self, c: Call):
        return self._user_delay(c, self.source_user_delay, "VOLT", 3)

    @scpi("[:SOURce#]:CURRent:DELay:USER#")
    def source_current_user_delay(self, c: Call):
        return self._user_delay(c, self.source_user_delay, "CURR", 3)

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
            return None
        return self._user_delay(c, self.sense_user_delay, func, 3)

    def _register_sense():  # noqa: N805 -- builds methods at class creation
        out = {}
        for func, long in (("CURR", "CURRent"), ("VOLT", "VOLTage"), ("RES", "RESistance")):
            for what, tail in (("range", ":RANGe[:UPPer]"), ("user", ":DELay:USER#")):
                def handler(self, c, _f=func, _w=what):
                    return self._sense(c, _f, _w)
                handler.__name__ = f"sense_{func.lower()}_{what}"
                scpi(f"[:SENSe#]:{long}{tail}")(handler)
                out[handler.__name__] = handler
        return out

    locals().update(_register_sense())
    del _register_sense

    @scpi("[:SENSe#]:AZERo:ONCE", query=False)
    def autozero_once(self, c: Call):
        self.bench.advance(self._integration_sec())  # one reference and zero measurement

    # ---- output ------------------------------------------------------------------------------------------
    # ---- measurement ------------------------------------------------------------------------------------
    def _integration_sec(self) -> float:
        n = self.nplc[self.sense_func]
        return n / LINE_FREQUENCY_HZ * (2.0 if self.azero[self.sense_func] else 1.0) + MEASURE_OVERHEAD_SEC

    def measure(self) -> float:
        """One reading of the sense function (the source acts only while the output is on)."""
        t = self._integration_sec()
        bench = self.bench
        before = bench.array.clock_sec
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
        bench.advance(max(0.0, t - (bench.array.clock_sec - before)))
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

    # ---- linear sweeps ---------------------------------------------------------------------------------------------
    def _sweep_setup(self, c: Call, func: str, by_step: bool):
        c.suffix(0)
        c.count(3, 9)
        n = len(c.params)
        top = 210.0 if func == "VOLT" else 1.05
        start = c.number(0, nmax=n, minimum=-top, maximum=top, name="sweep start")
        stop = c.number(1, nmax=n, minimum=-top, maximum=top, name="sweep stop")
        if by_step:
            step = c.number(2, nmax=n, minimum=1e-12, maximum=2 * top, name="sweep step")
            points = int(math.floor(abs(stop - start) / step + 1e-9)) + 1
        else:
            points = int(c.number(2, nmax=n, minimum=2, maximum=MAX_BUFFER_POINTS, name="sweep points"))
        delay = c.number(3, nmax=n, minimum=-1.0, maximum=10e3, name="sweep delay") if n > 3 else -1.0
        if -1.0 < delay < 0.0 or 0.0 < delay < 50e-6:
            raise ScpiError(-222, "sweep delay must be -1 (auto), 0 or 50 us .. 10 ks")
        count = int(c.number(4, nmax=n, minimum=0, maximum=268435455, name="sweep count")) if n > 4 else 1
        if count == 0:
            raise ScpiError(-221, "infinite sweeps (count 0) are not emulated")
        range_type = c.choice(5, {"AUTO": "AUTO", "BEST": "BEST", "FIXed": "FIX"}, nmax=n) if n > 5 else "BEST"
        fail_abort = c.boolean(6, nmax=n) if n > 6 else True
        dual = c.boolean(7, nmax=n) if n > 7 else False
        buffer = unquote(c.params[8]) if n > 8 else "defbuffer1"
        if buffer not in self.buffers:
            raise ScpiError(-224, f"reading buffer {buffer!r} not found")
        levels = np.linspace(start, stop, points) if not by_step else \
            start + math.copysign(step, stop - start) * np.arange(points)
        if dual:
            levels = np.concatenate([levels, levels[::-1]])
        peak = float(np.max(np.abs(levels)))
        ranges = V_SOURCE_RANGES if func == "VOLT" else I_RANGES
        if range_type == "FIX" and peak > self.source_range[func] * 1.05:
            raise ScpiError(-222, f"sweep level {peak:g} exceeds the fixed {self.source_range[func]:g} range")
        _pick_range(ranges, peak)
        self.sweep = {"func": func, "levels": levels, "delay": delay, "count": count, "range": range_type,
                      "fail_abort": fail_abort, "buffer": buffer}

    @scpi("[:SOURce#]:SWEep:VOLTage:LINear", query=False)
    def sweep_voltage_linear(self, c: Call):
        self._sweep_setup(c, "VOLT", by_step=False)

    @scpi("[:SOURce#]:SWEep:CURRent:LINear", query=False)
    def sweep_current_linear(self, c: Call):
        self._sweep_setup(c, "CURR", by_step=False)

    @scpi("[:SOURce#]:SWEep:VOLTage:LINear:STEP", query=False)
    def sweep_voltage_linear_step(self, c: Call):
        self._sweep_setup(c, "VOLT", by_step=True)

    @scpi("[:SOURce#]:SWEep:CURRent:LINear:STEP", query=False)
    def sweep_current_linear_step(self, c: Call):
        self._sweep_setup(c, "CURR", by_step=True)

    def _run_sweep(self) -> None:
        """The sweep's trigger model: buffer clear, output on, then per point source level, delay, measure."""
        sw = self.sweep
        func = sw["func"]
        buf = self.buffers.get(sw["buffer"])
        if buf is None:
            raise ScpiError(-221, f"the sweep's reading buffer {sw['buffer']!r} was deleted")
        buf.clear()
        self.source_func = func
        ranges = V_SOURCE_RANGES if func == "VOLT" else I_RANGES
        if sw["range"] == "BEST":
            self.source_range[func] = _pick_range(ranges, float(np.max(np.abs(sw["levels"]))))
        self.output = True
        wait = max(sw["delay"], 0.0) + self.source_delay[func]
        for _ in range(sw["count"]):
            for level in sw["levels"].tolist():
                if sw["range"] == "AUTO":
                    self.source_range[func] = _pick_range(ranges, level)
                self.level[func] = float(level)
                self.bench.advance(wait)
                self._take(buf, 1)
                if self.tripped and sw["fail_abort"]:
                    self.logger.info("sweep aborted at %g: the source limit was reached", level)
                    return

    # ---- trigger model (initiate runs the configured sweep, or one measurement) -----------------------------------
    @scpi(":ABORt", query=False)
    def abort(self, c: Call):
        return None  # the emulated trigger model runs to completion inside :INITiate

    @scpi(":INITiate[:IMMediate]", query=False)
    def initiate(self, c: Call):
        if self.sweep is not None:
            self._run_sweep()
        else:
            self._take(self.buffers["defbuffer1"])

    @scpi(":STATus:CLEar", query=False)
    def status_clear(self, c: Call):
        self.esr = 0

    @scpi(":SYSTem:LFRequency", write=False)
    def line_frequency(self, c: Call):
        return str(int(LINE_FREQUENCY_HZ))

    @scpi(":SYSTem:CLEar", query=False)
    def system_clear(self, c: Call):
        self.clear_status()

