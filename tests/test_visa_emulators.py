"""The SCPI/TSP instrument emulators behave as the real instruments do, over real TCP through pyvisa-py.

Standard SCPI (``*IDN?``, ``*RST``, ``*CLS``, ``*OPC?``, ``*ESR?``, the ``SYST:ERR?`` queue
with standard codes, compound commands, short/long forms, suffixes), the 707B's TSP,
the command logs, and the physics the instruments share through the matrix.
"""

from __future__ import annotations

import pytest
import pyvisa

from firmware_stub.scpi.serve_bench import start_bench
from tests.waiting import HANG_GUARD_SEC

pytestmark = pytest.mark.timing  # real TCP to instrument servers in threads


@pytest.fixture(scope="module")
def rb():
    running = start_bench(4, 5, seed=11)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def rm():
    manager = pyvisa.ResourceManager("@py")
    yield manager
    manager.close()


def _open(rm, rb, role):
    return rm.open_resource(rb.resources[role], read_termination="\n", write_termination="\n",
                            timeout=int(HANG_GUARD_SEC * 1000))


@pytest.fixture
def smu(rm, rb):
    r = _open(rm, rb, "smu")
    assert r.query("*RST;*CLS;*OPC?") == "1"
    rb.matrix.outputs_off()
    yield r
    r.close()


@pytest.fixture
def gen(rm, rb):
    r = _open(rm, rb, "pulse_generator")
    assert r.query("*RST;*CLS;*OPC?") == "1"
    rb.matrix.outputs_off()
    yield r
    r.close()


@pytest.fixture
def mx(rm, rb):
    r = _open(rm, rb, "switch_matrix")
    r.write("*CLS")
    r.write("reset()")
    assert r.query("*OPC?") == "1"
    yield r
    r.close()


def drain(res, query="SYST:ERR?"):
    out = []
    for _ in range(50):
        reply = res.query(query)
        code = int(reply.split(",")[0])
        if code == 0:
            return out
        out.append((code, reply))
    raise AssertionError("error queue never empties")


# ---- identity and IEEE 488.2 common commands -------------------------------------------------
def test_idn_of_each_instrument(rm, rb, smu, gen, mx):
    assert smu.query("*IDN?").startswith("KEITHLEY INSTRUMENTS,MODEL 2450,")
    assert gen.query("*IDN?").startswith("Keysight Technologies,33522B,")
    assert "Model 707B" in mx.query("*IDN?")
    assert smu.query("*OPC?") == "1" and gen.query("*OPC?") == "1" and mx.query("*OPC?") == "1"
    assert smu.query("*LANG?") == "SCPI"


def test_rst_restores_defaults_and_keeps_the_error_queue(smu):
    smu.write(":SOUR:VOLT:ILIM 1e-3")
    smu.write(":NOT:A:COMMAND")
    assert float(smu.query(":SOUR:VOLT:ILIM?")) == pytest.approx(1e-3)
    smu.write("*RST")
    assert float(smu.query(":SOUR:VOLT:ILIM?")) == pytest.approx(1.05e-4)  # the 2450 default
    assert smu.query(":OUTP?") == "0"
    assert smu.query("SYST:ERR?").startswith("-113,")  # *RST does not clear the queue
    assert smu.query("SYST:ERR?") == '0,"No error"'


def test_error_queue_is_fifo_with_standard_codes(smu, gen):
    smu.write(":SOUR:VOLT:ILIM 5")        # beyond 1.05 A
    smu.write(":SOUR:FUNC BANANA")        # not a source function
    smu.write(":SOUR:VOLT:ILIM")          # no value
    smu.write(":SOUR:VOLT:ILIM 1e-3,2")   # one value too many
    smu.write(":SOUR:VOLT:ILIM abc")      # not a number
    assert int(smu.query(":SYST:ERR:COUN?")) == 5
    codes = [c for c, _ in drain(smu)]
    assert codes == [-222, -224, -109, -108, -104]
    gen.write("SOUR3:FUNC PULS")          # the 33522B has two channels
    assert gen.query("SYST:ERR?").startswith("-114,")
    assert gen.query("SYST:ERR?") == '+0,"No error"'  # Keysight's signed format


def test_esr_and_stb_follow_the_errors(smu):
    smu.write("*CLS")
    smu.write(":BOGUS")
    assert int(smu.query("*STB?")) & 4  # error available
    assert int(smu.query("*ESR?")) & 32  # command error
    assert int(smu.query("*ESR?")) == 0  # read clears it
    smu.write(":SOUR:VOLT:ILIM 9")
    assert int(smu.query("*ESR?")) & 16  # execution error
    smu.write("*CLS")
    assert smu.query("SYST:ERR?") == '0,"No error"' and int(smu.query("*STB?")) & 4 == 0


def test_queue_overflow_replaces_the_newest_entry(rb, gen):
    for _ in range(rb.generator.error_queue_size + 5):
        gen.write(":NOPE")
    errors = drain(gen)
    assert len(errors) == rb.generator.error_queue_size
    assert errors[-1][0] == -350 and all(c == -113 for c, _ in errors[:-1])


def test_headers_short_long_case_and_compound_paths(smu, gen):
    smu.write(":SOURCE1:VOLTAGE:LEVEL:IMMEDIATE:AMPLITUDE 0.15")
    assert float(smu.query(":sour:volt?")) == pytest.approx(0.15)
    smu.write(":SOUR:VOLT:LEV 0.1;ILIM 2e-4")  # ILIM is relative to :SOUR:VOLT
    assert float(smu.query(":SOUR:VOLT:ILIM?")) == pytest.approx(2e-4)
    assert smu.query(":SOUR:VOLT?;:SOUR:VOLT:ILIM?") == "1.000000E-01;2.000000E-04"
    assert smu.query("SYST:ERR?") == '0,"No error"'
    gen.write("SOUR1:FUNC:PULS:WIDT 1e-6;FUNC:PULS:PER 1e-5")  # relative path: SOUR1:FUNC:PULS:FUNC:... undefined
    assert gen.query("SYST:ERR?").startswith("-113,")
    gen.write("VOLT:LOW 0;HIGH 1.2")  # HIGH relative to VOLT
    assert float(gen.query("VOLT:HIGH?")) == pytest.approx(1.2)
    gen.write("FUNC:PULS:WIDT 50 ns")  # SI suffix
    assert float(gen.query("FUNC:PULS:WIDT?")) == pytest.approx(50e-9)
    assert gen.query("SYST:ERR?") == '+0,"No error"'


def test_every_command_is_logged(rb, smu, mx):
    n_smu, n_mx = len(rb.smu.log), len(rb.matrix.log)
    smu.write(":SOUR:VOLT 0.05")
    assert smu.query("*OPC?") == "1"
    mx.query("print(errorqueue.count)")
    assert rb.smu.log[n_smu:] == [":SOUR:VOLT 0.05", "*OPC?"]
    assert rb.matrix.log[n_mx:] == ["print(errorqueue.count)"]


# ---- the 707B's TSP ------------------------------------------------------------------------------
def test_707b_channels_and_error_queue(rb, mx):
    mx.write('channel.close("1A01,1B07")')
    assert mx.query('print(channel.getclose("allslots"))') == "1A01;1B07"
    mx.write('channel.exclusiveclose("1C02")')
    assert mx.query('print(channel.getclose("slot1"))') == "1C02"
    mx.write('channel.close("1A01:1B02")')  # a range is the rectangle A01 A02 B01 B02
    assert set(mx.query('print(channel.getclose("allslots"))').split(";")) == {"1A01", "1A02", "1B01", "1B02",
                                                                               "1C02"}
    mx.write('channel.open("allslots")')
    assert mx.query('print(channel.getclose("allslots"))') == "nil"
    assert rb.bench.closed == set()
    mx.write('channel.close("1A01,9Z99")')  # one bad channel: nothing switches
    assert mx.query('print(channel.getclose("allslots"))') == "nil"
    mx.write("channel.frobnicate()")
    mx.write("channel.close(")
    assert float(mx.query("print(errorqueue.count)")) == 3
    codes = [int(float(mx.query("print(errorqueue.next())").split("\t")[0])) for _ in range(3)]
    assert codes == [-222, -286, -285]
    assert mx.query("print(errorqueue.next())").split("\t")[1] == "Queue Is Empty"
    mx.write("channel.connectrule = channel.MAKE_BEFORE_BREAK")
    assert float(mx.query("print(channel.connectrule)")) == 2
    assert mx.query("print(localnode.model)") == "707B"


# ---- physics through the matrix --------------------------------------------------------------------
def _route(mx, *channels):
    assert mx.query(f'channel.exclusiveclose("{",".join(channels)}") print(channel.getclose("allslots"))')


def test_smu_measures_the_routed_device_with_compliance(rb, smu, mx):
    w = rb.bench.wiring
    a = rb.array
    smu.write(":SOUR:FUNC VOLT;:SOUR:VOLT:RANG 0.2;:SOUR:VOLT 0.2;:SOUR:VOLT:ILIM 1e-3;"
              ':SENS:FUNC "CURR";:SENS:CURR:RANG 1e-4;:SENS:CURR:NPLC 1')
    _route(mx, w.channel("A", w.word_lines[2]), w.channel("B", w.bit_lines[3]))
    assert float(smu.query(":READ?")) == 0.0  # output off: nothing reaches the device
    smu.write(":OUTP ON")
    i = float(smu.query(":READ?"))
    g_true = a.true_conductance_s([2 * a.cols + 3])[0]
    assert i == pytest.approx(0.2 * g_true, rel=0.05)
    # two bit lines on LO: the two devices in parallel
    _route(mx, w.channel("A", w.word_lines[2]), w.channel("B", w.bit_lines[3]), w.channel("B", w.bit_lines[4]))
    i2 = float(smu.query(":READ?"))
    assert i2 == pytest.approx(0.2 * a.true_conductance_s([13, 14]).sum(), rel=0.05)
    smu.write(":SOUR:VOLT:ILIM 1e-7")  # compliance below the device current: clipped
    assert float(smu.query(":READ?")) == pytest.approx(1e-7)
    assert smu.query(":SOUR:VOLT:ILIM:TRIP?") == "1"
    smu.write(":OUTP OFF")
    assert rb.bench.counters.hot_switches >= 1  # the matrix moved while the SMU drove 0.2 V
    clock = float(smu.query(":EMUL:CLOC?"))
    smu.write(":EMUL:WAIT 3600")
    assert float(smu.query(":EMUL:CLOC?")) == pytest.approx(clock + 3600, abs=0.01)


def _pulser(gen, level, load="INF"):
    gen.write(f"OUTP1:LOAD {load};:SOUR1:FUNC PULS;:SOUR1:VOLT:LOW 0;:SOUR1:VOLT:HIGH {level};"
              ":SOUR1:FUNC:PULS:WIDT 5e-8;:SOUR1:FUNC:PULS:PER 1e-6;:SOUR1:BURS:MODE TRIG;"
              ":SOUR1:BURS:NCYC 30;:SOUR1:BURS:STAT ON;:TRIG1:SOUR BUS")
    assert gen.query("SYST:ERR?") == '+0,"No error"'


def test_generator_bursts_pulse_the_routed_device_only_when_on(rb, gen, mx):
    w, a = rb.bench.wiring, rb.array
    dev = 1 * a.cols + 1
    _pulser(gen, 1.6)
    _route(mx, w.channel("C", w.word_lines[1]), w.channel("D", w.bit_lines[1]))
    g0 = a.true_conductance_s([dev])[0]
    n0 = a.counters.pulses_total
    gen.write("*TRG")  # output off: the burst reaches nothing
    assert gen.query("*OPC?") == "1"
    assert a.counters.pulses_total == n0
    gen.write("OUTP1 ON")
    gen.write("*TRG")
    assert gen.query("*OPC?") == "1"
    assert a.counters.pulses_total == n0 + 30
    g1 = a.true_conductance_s([dev])[0]
    assert g1 > g0 + 5e-6  # SET: word line high
    _route(mx, w.channel("C", w.bit_lines[1]), w.channel("D", w.word_lines[1]))  # reversed: RESET
    gen.write("*TRG")
    assert gen.query("*OPC?") == "1"
    assert a.true_conductance_s([dev])[0] < g1 - 2e-6
    gen.write("OUTP1 OFF")


def test_generator_load_setting_and_voltage_limits(rb, gen, mx):
    w, a = rb.bench.wiring, rb.array
    dev = 2 * a.cols + 2
    _route(mx, w.channel("C", w.word_lines[2]), w.channel("D", w.bit_lines[2]))
    _pulser(gen, 0.8)  # 0.8 V into high-Z: at the SET threshold, no pulse moves the conductance ...
    g0 = a.g[dev]
    gen.write("OUTP1 ON;*TRG")
    assert gen.query("*OPC?") == "1"
    # ... only the burst's one write error lands (DEVICE_MODEL.md: every write event, whatever its size)
    assert abs(a.g[dev] - g0) <= 5 * a.params.sigma_w_s and a.n_pulses[dev] == 30
    gen.write("OUTP1 OFF")
    _pulser(gen, 0.8, load="50")  # told "50 ohm": the open-circuit voltage doubles to 1.6 V
    gen.write("OUTP1 ON;*TRG")
    assert gen.query("*OPC?") == "1"
    gen.write("OUTP1 OFF")
    assert a.g[dev] > g0 + 5e-6
    gen.write("OUTP1:LOAD INF;:SOUR1:VOLT:LIM:HIGH 2;:SOUR1:VOLT:LIM:LOW 0;:SOUR1:VOLT:LIM:STAT ON")
    assert gen.query("SYST:ERR?") == '+0,"No error"'
    gen.write("SOUR1:VOLT:HIGH 2.5")  # beyond the limit: refused, level unchanged
    assert gen.query("SYST:ERR?").startswith("-221,")
    assert float(gen.query("SOUR1:VOLT:HIGH?")) == pytest.approx(0.8)


def test_burst_count_and_trigger_rules(rb, gen):
    gen.write("SOUR1:BURS:NCYC 0")
    assert gen.query("SYST:ERR?").startswith("-222,")
    gen.write("*TRG")  # not in burst mode with a BUS trigger
    assert gen.query("SYST:ERR?").startswith("-211,")
    assert float(gen.query("OUTP1:LOAD?")) == pytest.approx(50.0)  # reset default: 50 ohm
    gen.write("OUTP1:LOAD INF")
    assert float(gen.query("OUTP1:LOAD?")) == pytest.approx(9.9e37)
