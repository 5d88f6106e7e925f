"""An independent, widely used driver works against the emulators: pymeasure's Keithley2450 and Agilent33500.

Offline, over pyvisa-py and TCP, exactly as pymeasure drives the real instruments
(its compound messages, its long-form ``OUTPUT ON``, its ``*RST;:stat:pres;:*CLS;``).
Skipped when pymeasure is not installed (it is an optional test dependency).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymeasure")

from pymeasure.instruments.agilent import Agilent33500  # noqa: E402
from pymeasure.instruments.keithley import Keithley2450  # noqa: E402

from firmware_stub.scpi.serve_bench import start_bench  # noqa: E402
from tests.waiting import HANG_GUARD_SEC  # noqa: E402

pytestmark = pytest.mark.timing  # real TCP to instrument servers in threads

KW = dict(visa_library="@py", read_termination="\n", write_termination="\n", timeout=int(HANG_GUARD_SEC * 1000))


@pytest.fixture
def rb():
    running = start_bench(3, 4, seed=21)
    yield running
    running.stop()


def test_pymeasure_keithley2450_measures_a_routed_device(rb):
    w, a = rb.bench.wiring, rb.array
    k = Keithley2450(rb.resources["smu"], **KW)
    try:
        assert "MODEL 2450" in k.id
        k.reset()
        k.apply_voltage(compliance_current=1e-3)  # queries the source mode, sets auto range, checks errors
        k.measure_current(nplc=1, current=1e-4, auto_range=False)
        k.source_voltage = 0.2
        assert k.source_mode == "voltage"
        assert k.compliance_current == pytest.approx(1e-3)
        assert k.current_range == pytest.approx(1e-4) and k.current_nplc == pytest.approx(1.0)
        with rb.bench.lock:
            rb.bench.set_crosspoints({(w.smu_hi, w.word_lines[1]), (w.smu_lo, w.bit_lines[2])}, set())
        k.enable_source()
        assert k.source_enabled
        current = k.current
        assert current == pytest.approx(0.2 * a.true_conductance_s([1 * a.cols + 2])[0], rel=0.05)
        assert k.check_errors() == []
        k.voltage_output_off_state = "HIMP"
        assert k.voltage_output_off_state == "HIMP"
        k.shutdown()  # ramps the source to 0 V (30 steps), aborts, output off
        assert k.source_voltage == 0.0 and not k.source_enabled
        assert rb.smu.output is False
        assert k.check_errors() == []
    finally:
        k.adapter.close()


def test_pymeasure_agilent33500_fires_a_pulse_burst(rb):
    w, a = rb.bench.wiring, rb.array
    dev = 2 * a.cols + 1
    g = Agilent33500(rb.resources["pulse_generator"], **KW)
    try:
        assert "33522B" in g.id
        g.shape = "PULS"
        g.output_load = "INF"
        g.voltage_high = 1.6
        g.voltage_low = 0.0
        g.pulse_width = 5e-8  # width first, then the shorter period: no conflict
        g.pulse_period = 1e-6
        g.burst_mode = "TRIG"
        g.burst_ncycles = 25
        g.burst_state = True
        g.trigger_source = "BUS"
        assert (g.shape, g.voltage_high, g.pulse_width, g.burst_ncycles, g.trigger_source) == \
               ("PULS", 1.6, 5e-8, 25, "BUS")
        assert g.output_load == pytest.approx(9.9e37)
        with rb.bench.lock:
            rb.bench.set_crosspoints({(w.pulse_hi, w.word_lines[2]), (w.pulse_lo, w.bit_lines[1])}, set())
        g0, n0 = a.g[dev], a.counters.pulses_total
        g.output = True
        g.trigger()  # *TRG;*WAI
        g.wait_for_trigger()  # *OPC?
        g.output = False
        assert a.counters.pulses_total == n0 + 25 and a.g[dev] > g0 + 5e-6
        assert g.check_errors() == []
        g.ch_2.shape = "SQU"  # pymeasure's channel API: SOUR2:...
        assert g.ch_2.shape == "SQU"
        assert g.check_errors() == []
    finally:
        g.adapter.close()
    assert np.isfinite(a.g).all()


# ---- every setting the bench's drivers use, through pymeasure's classes ------------------------------------
# Our drivers' settings (drivers.instruments): each is set and read back here through pymeasure -- with the
# pymeasure property or method that sends it where pymeasure has one, else through the pymeasure instrument's
# own write/ask -- and every reply is parsed with our driver's parser, so the two drivers agree on its meaning.
# Keyed by our property name: (pymeasure property or None, a value to set, the value our parser must read).
from drivers.instruments.keithley2450 import Keithley2450 as Our2450  # noqa: E402
from drivers.instruments.keithley707b import Keithley707B as Our707B  # noqa: E402
from drivers.instruments.keysight33500b import Keysight33500B as Our33500B  # noqa: E402
from drivers.instruments.scpi_property import InstrumentProperty  # noqa: E402

SMU_SETTINGS = {
    "source_function": ("source_mode", "voltage", "VOLT"),
    "source_voltage": ("source_voltage", 0.15, 0.15),
    "source_voltage_range": ("source_voltage_range", 2.0, 2.0),
    "current_limit": ("compliance_current", 2e-4, 2e-4),
    "current_limit_tripped": (None, None, False),
    "sense_function": ("measure_current", None, "CURR:DC"),
    "current_range": ("current_range", 1e-5, 1e-5),
    "current_autorange": (None, True, True),
    "current_nplc": ("current_nplc", 0.5, 0.5),
    "current_autozero": (None, False, False),
    "output_enabled": ("source_enabled", None, False),
    "output_off_mode": ("voltage_output_off_state", "ZERO", "ZERO"),
    "terminals": ("use_rear_terminals", None, "REAR"),
    "error_count": (None, None, 0),
}
GENERATOR_SETTINGS = {
    "function": ("shape", "PULS", "PULS"),
    "pulse_width": ("pulse_width", 1e-7, 1e-7),  # width before the shorter period
    "pulse_period": ("pulse_period", 2e-6, 2e-6),
    "edge_time": ("pulse_transition", 1e-8, 1e-8),
    "high_level": ("voltage_high", 1.2, 1.2),
    "low_level": ("voltage_low", 0.0, 0.0),
    "limit_high": (None, 2.0, 2.0),
    "limit_low": (None, 0.0, 0.0),
    "limits_enabled": (None, True, True),
    "load": ("output_load", "INF", float("inf")),  # a high-Z load: our parser reads 9.9E+37 as infinity
    "output_enabled": ("output", False, False),
    "polarity": (None, "INV", "INV"),
    "burst_enabled": ("burst_state", True, True),
    "burst_mode": ("burst_mode", "TRIG", "TRIG"),
    "burst_cycles": ("burst_ncycles", 7, 7),
    "trigger_source": (None, "BUS", "BUS"),
}
MATRIX_SETTINGS = {"connect_rule": (None, "BREAK_BEFORE_MAKE", "BREAK_BEFORE_MAKE")}


def _settings_of(cls) -> dict[str, InstrumentProperty]:
    found: dict[str, InstrumentProperty] = {}
    for klass in reversed(cls.__mro__):
        found.update({k: v for k, v in vars(klass).items() if isinstance(v, InstrumentProperty)})
    return found


@pytest.mark.parametrize("driver,table", [(Our2450, SMU_SETTINGS), (Our33500B, GENERATOR_SETTINGS),
                                          (Our707B, MATRIX_SETTINGS)], ids=["2450", "33500B", "707B"])
def test_the_tables_cover_every_setting_our_drivers_send(driver, table):
    assert set(_settings_of(driver)) == set(table)


def _check(prop: InstrumentProperty, reply: str, expected) -> None:
    got = prop.parse(reply)
    if isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-6), (prop.name, reply)
    else:
        assert got == expected, (prop.name, reply)


def test_every_smu_setting_through_pymeasure_keithley2450(rb):
    k = Keithley2450(rb.resources["smu"], **KW)
    props = _settings_of(Our2450)
    try:
        k.reset()
        k.clear()  # *CLS
        assert "MODEL 2450" in k.id and k.ask("*LANG?").strip().strip('"') == "SCPI"
        for name, (attr, value, expected) in SMU_SETTINGS.items():
            prop = props[name]
            if name == "sense_function":
                k.measure_current(nplc=1, current=1e-4, auto_range=False)  # :SENS:FUNC 'CURR'
            elif name == "terminals":
                k.use_rear_terminals()
            elif name == "output_enabled":
                k.disable_source()
            elif attr is not None:
                setattr(k, attr, value)
            elif prop.set_cmd is not None:  # no pymeasure property: the instrument class's own write
                k.write(prop.set_cmd.format("ON" if value is True else "OFF" if value is False else value))
            _check(prop, k.ask(prop.get_cmd), expected)
            if attr is not None and name not in ("sense_function", "terminals", "output_enabled"):
                assert getattr(k, attr) == (pytest.approx(value) if isinstance(value, float) else value), name
        assert k.check_errors() == []
        # the reading the bench takes: output on, :READ?, output off, error queue empty, *OPC?
        w = rb.bench.wiring
        with rb.bench.lock:
            rb.bench.set_crosspoints({(w.smu_hi, w.word_lines[0]), (w.smu_lo, w.bit_lines[0])}, set())
        k.current_range = 1e-4
        k.enable_source()
        assert k.current == pytest.approx(0.15 * rb.array.true_conductance_s([0])[0], rel=0.05)
        k.disable_source()
        assert int(k.ask(":SYST:ERR:COUN?")) == 0 and k.next_error[0] == 0 and int(k.complete) == 1
    finally:
        k.adapter.close()


def test_every_generator_setting_through_pymeasure_agilent33500(rb):
    g = Agilent33500(rb.resources["pulse_generator"], **KW)
    props = _settings_of(Our33500B)
    try:
        g.reset()
        ch = g.ch_1  # our driver addresses the channel as pymeasure's channel does: SOUR1:, OUTP1, TRIG1:
        for name, (attr, value, expected) in GENERATOR_SETTINGS.items():
            prop = props[name]
            if attr is not None:
                setattr(ch, attr, value)
            else:
                ch.write(prop.set_cmd.format("ON" if value is True else "OFF" if value is False else value,
                                             ch="{ch}"))
            _check(prop, ch.ask(prop.get_cmd.format(ch="{ch}")), expected)
        assert g.check_errors() == []
        # the burst the bench fires: routed through the matrix, *TRG, *OPC?, error queue empty
        w, a = rb.bench.wiring, rb.array
        with rb.bench.lock:
            rb.bench.set_crosspoints({(w.pulse_hi, w.word_lines[1]), (w.pulse_lo, w.bit_lines[3])}, set())
        ch.write("OUTP{ch}:POL NORM")
        dev = 1 * a.cols + 3
        g0, n0 = a.g[dev], a.counters.pulses_total
        ch.output = True
        g.trigger()
        g.wait_for_trigger()
        ch.output = False
        assert a.counters.pulses_total == n0 + 7 and a.g[dev] > g0
        assert g.next_error[0] == 0
    finally:
        g.adapter.close()


def test_every_matrix_command_through_a_pymeasure_instrument(rb):
    from pymeasure.instruments import Instrument

    m = Instrument(rb.resources["switch_matrix"], "Keithley 707B", includeSCPI=False, **KW)
    rule = _settings_of(Our707B)["connect_rule"]
    w = rb.bench.wiring
    try:
        assert "707B" in m.ask("*IDN?").upper()
        m.write('channel.open("allslots")')
        m.write(rule.set_cmd.format("BREAK_BEFORE_MAKE"))
        _check(rule, m.ask(rule.get_cmd), "BREAK_BEFORE_MAKE")
        wanted = sorted({w.channel(w.smu_hi, w.word_lines[2]), w.channel(w.smu_lo, w.bit_lines[1])})
        reply = m.ask(f'channel.exclusiveclose("{",".join(wanted)}") '
                      'print(channel.getclose("allslots"), errorqueue.count)')
        closed, _, count = reply.strip().partition("\t")
        assert sorted(c.strip() for c in closed.split(";")) == wanted and int(float(count)) == 0
        assert rb.bench.closed == {(w.smu_hi, w.word_lines[2]), (w.smu_lo, w.bit_lines[1])}
        m.write('channel.open("allslots")')
        assert m.ask('print(channel.getclose("allslots"))').strip() == "nil"
        assert int(float(m.ask("print(errorqueue.count)"))) == 0
        assert m.ask("print(errorqueue.next())").split("\t")[0].strip() in ("0", "0.0", "0.00000e+00")
        assert int(m.ask("*OPC?")) == 1  # what our driver waits on after opening every crosspoint
    finally:
        m.adapter.close()
