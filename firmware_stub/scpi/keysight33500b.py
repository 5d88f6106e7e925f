"""Keysight 33522B (33500B series) waveform generator, emulated on the shared bench.

Channel 1's output is wired to the matrix rows of the pulse generator (HI, and LO as
its return); channel 2 exists (commands work) but reaches nothing.  Documented
commands used by this stack and by pymeasure's ``Agilent33500``: function, frequency
and pulse period, width and edge time, amplitude/offset and high/low levels,
voltage limits (``VOLT:LIM:HIGH/LOW``, ``VOLT:LIM:STAT``), output state, load and
polarity, burst state/mode/count/period/phase/gate polarity, trigger source, count,
slope, timer and delay, frequency mode, phase synchronisation (``PHAS:SYNC``), the
sync output (``OUTP:SYNC``, ``OUTP:SYNC:SOUR``), ``*TRG`` and ``TRIGger[1|2]`` (and
QCoDeS's ``Keysight33522B``).

Physics: a bus-triggered burst (``BURS:STAT ON``, ``BURS:MODE TRIG``,
``TRIG:SOUR BUS``, then ``*TRG``) with the output on and function ``PULS`` applies
``NCYC`` pulses at the pulse level to the devices routed between the generator's
rows.  The instrument computes its output for the load it is told about: with
``OUTP:LOAD 50`` (the reset default) the open-circuit voltage is twice the
programmed level; with ``OUTP:LOAD INF`` it is the programmed level.  The 50 ohm
output resistance then divides with the devices.  With the output off, nothing
happens; bursts of other functions, continuous output and infinite bursts are not
modelled (logged as bench warnings, no effect on the devices).
"""

from __future__ import annotations

import math

from firmware_stub.scpi.instrument import Call, ScpiInstrument, scpi
from firmware_stub.scpi.settings import BOOLEAN, CHOICE, NUMBER, Setting
from protocols.scpi import SCPI_INF, STANDARD_ERRORS, ScpiError

MIN_WIDTH_SEC = 16e-9
MIN_EDGE_SEC = 8.4e-9
MAX_OPEN_CIRCUIT_V = 10.0
OUTPUT_OHMS = 50.0
CHANNELS = (1, 2)

_FUNCS = {"SINusoid": "SIN", "SQUare": "SQU", "TRIangle": "TRI", "RAMP": "RAMP", "PULSe": "PULS",
          "PRBS": "PRBS", "NOISe": "NOIS", "ARB": "ARB", "DC": "DC"}


def num(x: float) -> str:
    """Keysight's NR3: ``+1.000000000000000E-07``."""
    if math.isinf(x):
        x = SCPI_INF if x > 0 else -SCPI_INF
    return f"{x:+.15E}"


class _Channel:
    def __init__(self) -> None:
        self.func = "SIN"
        self.frequency = 1e3
        self.high, self.low = 0.05, -0.05
        self.unit = "VPP"
        self.pulse_period = 1e-3
        self.pulse_width = 100e-6
        self.pulse_edge = 10e-9
        self.pulse_hold = "WIDT"
        self.square_dcycle = 50.0
        self.ramp_symmetry = 100.0
        self.phase = 0.0
        self.output = False
        self.load = 50.0
        self.polarity = "NORM"
        self.burst = False
        self.burst_mode = "TRIG"
        self.burst_ncycles: float = 1
        self.burst_period = 10e-3
        self.burst_phase = 0.0
        self.trigger_source = "IMM"
        self.trigger_delay = 0.0
        self.trigger_count: float = 1
        self.trigger_slope = "POS"
        self.trigger_timer = 1e-3
        self.frequency_mode = "CW"
        self.burst_gate_polarity = "NORM"
        self.lim_high, self.lim_low, self.lim_on = 5.0, -5.0, False

    @property
    def open_circuit_factor(self) -> float:
        return 1.0 if math.isinf(self.load) else (self.load + OUTPUT_OHMS) / self.load

    @property
    def max_programmed_v(self) -> float:
        return MAX_OPEN_CIRCUIT_V / self.open_circuit_factor


def _channel_setting(pattern: str, attr: str, kind: str, **kw) -> Setting:
    return Setting(pattern, attr, kind, holder="_c", **kw)


_POLARITIES = {"NORMal": "NORM", "INVerted": "INV"}

#: the generator's plain settings (no side effects): per channel, but the sync output's state
SETTINGS = (
    _channel_setting("[:SOURce#]:FUNCtion:PULSe:TRANsition[:BOTH]", "pulse_edge", NUMBER, minimum=MIN_EDGE_SEC,
                     maximum=1e-6, default=10e-9, label="edge time", unit="s"),
    _channel_setting("[:SOURce#]:FUNCtion:PULSe:HOLD", "pulse_hold", CHOICE, choices={"WIDTh": "WIDT", "DCYCle": "DCYC"}),
    _channel_setting("[:SOURce#]:FUNCtion:SQUare:DCYCle", "square_dcycle", NUMBER, minimum=0.01, maximum=99.99,
                     label="duty cycle", unit="%"),
    _channel_setting("[:SOURce#]:FUNCtion:RAMP:SYMMetry", "ramp_symmetry", NUMBER, minimum=0.0, maximum=100.0,
                     label="symmetry", unit="%"),
    _channel_setting("[:SOURce#]:PHASe[:ADJust]", "phase", NUMBER, minimum=-360.0, maximum=360.0, label="phase",
                     unit="deg"),
    _channel_setting(":OUTPut#:POLarity", "polarity", CHOICE, choices=_POLARITIES),
    _channel_setting("[:SOURce#]:BURSt:STATe", "burst", BOOLEAN),
    _channel_setting("[:SOURce#]:BURSt:MODE", "burst_mode", CHOICE, choices={"TRIGgered": "TRIG", "GATed": "GAT"}),
    _channel_setting("[:SOURce#]:BURSt:INTernal:PERiod", "burst_period", NUMBER, minimum=1e-6, maximum=8000.0,
                     default=10e-3, label="burst period", unit="s"),
    _channel_setting("[:SOURce#]:BURSt:PHASe", "burst_phase", NUMBER, minimum=-360.0, maximum=360.0,
                     label="burst phase", unit="deg"),
    _channel_setting(":TRIGger#:SOURce", "trigger_source", CHOICE,
                     choices={"IMMediate": "IMM", "EXTernal": "EXT", "TIMer": "TIM", "BUS": "BUS"}),
    _channel_setting(":TRIGger#:DELay", "trigger_delay", NUMBER, minimum=0.0, maximum=1000.0, label="trigger delay",
                     unit="s"),
    _channel_setting(":TRIGger#:SLOPe", "trigger_slope", CHOICE, choices={"POSitive": "POS", "NEGative": "NEG"}),
    _channel_setting(":TRIGger#:TIMer", "trigger_timer", NUMBER, minimum=1e-6, maximum=8000.0, default=1e-3,
                     label="trigger timer", unit="s"),
    _channel_setting("[:SOURce#]:BURSt:GATE:POLarity", "burst_gate_polarity", CHOICE, choices=_POLARITIES),
    Setting(":OUTPut:SYNC[:STATe]", "sync_on", BOOLEAN),
)


class Keysight33500B(ScpiInstrument):
    kind = "pulse_generator"
    manufacturer = "Keysight Technologies"
    model = "33522B"
    firmware = "4.00-1.19-2.00-58-00"
    error_queue_size = 20
    signed_error_codes = True
    settings = SETTINGS
    format_number = staticmethod(num)

    def reset(self) -> None:
        self.ch = {n: _Channel() for n in CHANNELS}
        self.display_text = ""
        self.sync_on = True
        self.sync_source = 1

    # ---- safety hooks ---------------------------------------------------------------------------
    def outputs_off(self) -> None:
        for c in self.ch.values():
            c.output = False

    def driven_level_v(self) -> float:
        c = self.ch[1]
        if not c.output:
            return 0.0
        pulse, baseline = (c.high, c.low) if c.polarity == "NORM" else (c.low, c.high)
        idle = baseline if (c.burst and c.burst_mode == "TRIG" and c.trigger_source != "IMM") else \
            max(pulse, baseline, key=abs)
        return idle * c.open_circuit_factor

    def _c(self, call: Call, node: int = 0) -> _Channel:
        return self.ch[call.suffix(node, CHANNELS)]

    # ---- function and timing ------------------------------------------------------------------------
    @scpi("[:SOURce#]:FUNCtion[:SHAPe]")
    def function(self, c: Call):
        ch = self._c(c)
        if c.query:
            return ch.func
        c.count(1)
        ch.func = c.choice(0, _FUNCS)

    @scpi("[:SOURce#]:FREQuency[:CW]")
    def frequency(self, c: Call):
        ch = self._c(c)
        if c.query:
            return num(1.0 / ch.pulse_period if ch.func == "PULS" else ch.frequency)
        f = c.number(0, minimum=1e-6, maximum=30e6, default=1e3, name="frequency")
        ch.frequency = f
        if ch.func == "PULS":
            self._set_period(ch, 1.0 / f)

    def _set_period(self, ch: _Channel, p: float) -> None:
        """Like the instrument: a period too short for the width is accepted and the width shrinks to fit
        (reported as a settings conflict)."""
        ch.pulse_period = p
        ch.frequency = 1.0 / p
        if ch.pulse_width > p - MIN_WIDTH_SEC:
            ch.pulse_width = max(MIN_WIDTH_SEC, p - MIN_WIDTH_SEC)
            self.push_error(-221, f"Settings conflict;pulse width adjusted to {ch.pulse_width:g} s")

    @scpi("[:SOURce#]:FUNCtion:PULSe:PERiod")
    def pulse_period(self, c: Call):
        ch = self._c(c)
        if c.query:
            return num(ch.pulse_period)
        self._set_period(ch, c.number(0, minimum=33e-9, maximum=1e6, default=1e-3, name="pulse period"))

    @scpi("[:SOURce#]:FUNCtion:PULSe:WIDTh")
    def pulse_width(self, c: Call):
        ch = self._c(c)
        if c.query:
            return num(ch.pulse_width)
        w = c.number(0, minimum=MIN_WIDTH_SEC, maximum=1e6, default=100e-6, name="pulse width")
        if w > ch.pulse_period - MIN_WIDTH_SEC:
            raise ScpiError(-221, f"pulse width {w:g} s does not fit the {ch.pulse_period:g} s period")
        ch.pulse_width = w

    @scpi("[:SOURce#]:FUNCtion:PULSe:DCYCle")
    def pulse_duty(self, c: Call):
        ch = self._c(c)
        if c.query:
            return num(100.0 * ch.pulse_width / ch.pulse_period)
        d = c.number(0, minimum=0.01, maximum=99.99, name="duty cycle")
        ch.pulse_width = ch.pulse_period * d / 100.0




    # ---- levels --------------------------------------------------------------------------------------
    def _set_levels(self, ch: _Channel, high: float, low: float) -> None:
        if not high > low:
            raise ScpiError(-221, "high level must be above low level")
        top = ch.max_programmed_v
        if max(abs(high), abs(low)) > top + 1e-12:
            raise ScpiError(-222, f"level beyond +-{top:g} V for a {ch.load:g} ohm load")
        if ch.lim_on and (high > ch.lim_high + 1e-12 or low < ch.lim_low - 1e-12):
            raise ScpiError(-221, f"level outside the voltage limits [{ch.lim_low:g}, {ch.lim_high:g}] V")
        ch.high, ch.low = high, low

    @scpi("[:SOURce#]:VOLTage[:LEVel][:IMMediate][:AMPLitude]")
    def amplitude(self, c: Call):
        ch = self._c(c)
        if c.query:
            return num(ch.high - ch.low)
        a = c.number(0, minimum=1e-3, maximum=2 * ch.max_programmed_v, default=0.1, name="amplitude")
        off = (ch.high + ch.low) / 2
        self._set_levels(ch, off + a / 2, off - a / 2)

    @scpi("[:SOURce#]:VOLTage[:LEVel][:IMMediate]:OFFSet")
    def offset(self, c: Call):
        ch = self._c(c)
        if c.query:
            return num((ch.high + ch.low) / 2)
        o = c.number(0, minimum=-ch.max_programmed_v, maximum=ch.max_programmed_v, default=0.0, name="offset")
        a = ch.high - ch.low
        self._set_levels(ch, o + a / 2, o - a / 2)

    @scpi("[:SOURce#]:VOLTage[:LEVel][:IMMediate]:HIGH")
    def high_level(self, c: Call):
        ch = self._c(c)
        if c.query:
            return num(ch.high)
        top = ch.max_programmed_v
        self._set_levels(ch, c.number(0, minimum=-top, maximum=top, default=0.05, name="high level"), ch.low)

    @scpi("[:SOURce#]:VOLTage[:LEVel][:IMMediate]:LOW")
    def low_level(self, c: Call):
        ch = self._c(c)
        if c.query:
            return num(ch.low)
        top = ch.max_programmed_v
        self._set_levels(ch, ch.high, c.number(0, minimum=-top, maximum=top, default=-0.05, name="low level"))

    @scpi("[:SOURce#]:VOLTage:UNIT")
    def volt_unit(self, c: Call):
        ch = self._c(c)
        if c.query:
            return ch.unit
        ch.unit = c.choice(0, {"VPP": "VPP", "VRMS": "VRMS", "DBM": "DBM"})
        if ch.unit != "VPP":
            self.bench.warn("33500B emulator: only VPP amplitudes are modelled")

    @scpi("[:SOURce#]:VOLTage:LIMit:HIGH")
    def limit_high(self, c: Call):
        ch = self._c(c)
        if c.query:
            return num(ch.lim_high)
        v = c.number(0, minimum=-MAX_OPEN_CIRCUIT_V, maximum=MAX_OPEN_CIRCUIT_V, default=5.0, name="high limit")
        if v <= ch.lim_low:
            raise ScpiError(-221, "high limit must be above the low limit")
        if ch.lim_on and ch.high > v:
            raise ScpiError(-221, "the present high level exceeds the new limit")
        ch.lim_high = v

    @scpi("[:SOURce#]:VOLTage:LIMit:LOW")
    def limit_low(self, c: Call):
        ch = self._c(c)
        if c.query:
            return num(ch.lim_low)
        v = c.number(0, minimum=-MAX_OPEN_CIRCUIT_V, maximum=MAX_OPEN_CIRCUIT_V, default=-5.0, name="low limit")
        if v >= ch.lim_high:
            raise ScpiError(-221, "low limit must be below the high limit")
        if ch.lim_on and ch.low < v:
            raise ScpiError(-221, "the present low level is below the new limit")
        ch.lim_low = v

    @scpi("[:SOURce#]:VOLTage:LIMit:STATe")
    def limit_state(self, c: Call):
        ch = self._c(c)
        if c.query:
            return "1" if ch.lim_on else "0"
        on = c.boolean(0)
        if on and (ch.high > ch.lim_high + 1e-12 or ch.low < ch.lim_low - 1e-12):
            raise ScpiError(-221, "present levels lie outside the voltage limits")
        ch.lim_on = on

    # ---- output -----------------------------------------------------------------------------------------
    @scpi(":OUTPut#[:STATe]")
    def output_state(self, c: Call):
        ch = self._c(c)
        if c.query:
            return "1" if ch.output else "0"
        c.count(1)
        ch.output = c.boolean(0)
        if ch.output and not (ch.burst and ch.trigger_source != "IMM") and ch is self.ch[1]:
            self.bench.warn("33500B output on in continuous mode: continuous output is not modelled")

    @scpi(":OUTPut#:LOAD")
    def output_load(self, c: Call):
        ch = self._c(c)
        if c.query:
            return num(ch.load)
        load = c.number(0, minimum=1.0, maximum=10e3, default=50.0, allow_inf=True, name="load")
        new = _Channel()
        new.load = load
        if max(abs(ch.high), abs(ch.low)) > new.max_programmed_v + 1e-12:
            raise ScpiError(-221, "present levels do not fit the new load setting")
        ch.load = load


    # ---- burst and trigger ---------------------------------------------------------------------------------

    @scpi("[:SOURce#]:BURSt:NCYCles")
    def burst_ncycles(self, c: Call):
        ch = self._c(c)
        if c.query:
            return num(ch.burst_ncycles)
        n = c.number(0, minimum=1, maximum=100_000_000, default=1, allow_inf=True, name="burst count")
        if not math.isinf(n) and n != int(n):
            raise ScpiError(-222, f"burst count {n:g} is not an integer")
        ch.burst_ncycles = n if math.isinf(n) else int(n)

    @scpi(":TRIGger#:COUNt")
    def trigger_count(self, c: Call):
        ch = self._c(c)
        if c.query:
            return num(ch.trigger_count)
        n = c.number(0, minimum=1, maximum=1_000_000, default=1, allow_inf=True, name="trigger count")
        if not math.isinf(n) and n != int(n):
            raise ScpiError(-222, f"trigger count {n:g} is not an integer")
        ch.trigger_count = n if math.isinf(n) else int(n)

    @scpi("[:SOURce#]:FREQuency:MODE")
    def frequency_mode(self, c: Call):
        ch = self._c(c)
        if c.query:
            return ch.frequency_mode
        mode = c.choice(0, {"CW": "CW", "LIST": "LIST", "SWEep": "SWE", "FIXed": "FIX"})
        if mode in ("LIST", "SWE"):
            self.bench.warn("33500B emulator: frequency lists and sweeps are not modelled (fixed frequency)")
        ch.frequency_mode = "CW" if mode == "FIX" else mode  # FIXed is an alias of CW

    @scpi("[:SOURce#]:PHASe:SYNChronize", query=False)
    def phase_sync(self, c: Call):
        return None  # restarts both channels in phase; the emulated waveforms have no running phase

    @scpi(":OUTPut:SYNC:SOURce")
    def sync_source_select(self, c: Call):
        if c.query:
            return f"CH{self.sync_source}"
        self.sync_source = int(c.choice(0, {"CH1": "1", "CH2": "2"}))

    @scpi(":TRIGger#[:IMMediate]", query=False)
    def trigger_now(self, c: Call):
        self._fire(c.suffix(0, CHANNELS), software=True)

    def trigger(self) -> None:
        """*TRG: every channel whose trigger source is BUS fires."""
        fired = False
        for n, ch in self.ch.items():
            if ch.trigger_source == "BUS":
                self._fire(n, software=False)
                fired = True
        if not fired:
            self.push_error(-211, STANDARD_ERRORS[-211])

    def _fire(self, n: int, software: bool) -> None:
        ch = self.ch[n]
        if not (ch.burst and ch.burst_mode == "TRIG"):
            raise ScpiError(-211, "not in triggered burst mode")
        if not software and ch.trigger_source != "BUS":
            raise ScpiError(-211, "trigger source is not BUS")
        if math.isinf(ch.burst_ncycles):
            raise ScpiError(-221, "infinite bursts are not emulated")
        cycles = int(ch.burst_ncycles)
        period = ch.pulse_period if ch.func == "PULS" else 1.0 / ch.frequency
        self.bench.advance(ch.trigger_delay)
        if not ch.output or n != 1:
            self.bench.advance(cycles * period)  # the burst runs, but reaches no device
            return
        if ch.func != "PULS":
            self.bench.warn(f"33500B burst of function {ch.func} is not modelled (no effect on the devices)")
            self.bench.advance(cycles * period)
            return
        pulse, baseline = (ch.high, ch.low) if ch.polarity == "NORM" else (ch.low, ch.high)
        k = ch.open_circuit_factor
        self.bench.generator_burst(pulse * k, baseline * k, ch.pulse_width, ch.pulse_period, cycles)

    # ---- front panel ---------------------------------------------------------------------------------------
    @scpi(":DISPlay:TEXT[:DATA]")
    def display(self, c: Call):
        if c.query:
            return f'"{self.display_text}"'
        self.display_text = c.string(0)

    @scpi(":DISPlay:TEXT:CLEar", query=False)
    def display_clear(self, c: Call):
        self.display_text = ""
