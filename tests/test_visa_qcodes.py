"""QCoDeS's Keithley 2450 and Keysight 33522B drivers against the served emulators (pyvisa-py over TCP).

Every parameter the drivers expose that the real instruments support is set and read
back (the snapshot reads them all), the 2450's linear sweep runs on the emulated
device through its reading buffer, and no command leaves an error in the queue.
Skipped when qcodes is not installed (an optional test dependency).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("qcodes")

from qcodes.instrument_drivers.Keithley import Keithley2450  # noqa: E402
from qcodes.instrument_drivers.Keysight import Keysight33522B  # noqa: E402

from firmware_stub.scpi.serve_bench import start_bench  # noqa: E402


@pytest.fixture
def rb():
    running = start_bench(3, 4, seed=31)
    yield running
    running.stop()


def _no_errors(inst) -> None:
    errs = [line for line in inst.log if line.upper().startswith(":SYST:ERR")]
    assert inst.error_count == 0, (errs, list(inst._errors))


def _set_and_read_back_2450_parameters(k) -> None:
    """Every parameter QCoDeS's 2450 driver exposes, set and read back; then the whole snapshot."""
    k.reset()
    k.terminals("front")
    k.source_function("voltage")
    k.sense_function("current")  # ':SENS:FUNC "CURR:DC"'
    assert k.sense_function() == "current"
    src, sense = k.source, k.sense
    src.range(2.0)
    assert src.range() == 2.0
    src.auto_range(True)
    assert src.auto_range() is True
    src.limit(1e-3)
    assert float(src.limit()) == pytest.approx(1e-3)
    assert src.limit_tripped() is False
    src.voltage(0.2)
    assert float(src.voltage()) == pytest.approx(0.2)
    src.delay(1e-3)
    assert float(src.delay()) == pytest.approx(1e-3)
    src.auto_delay(True)
    assert src.auto_delay() is True
    src.user_number(2)
    src.user_delay(0.5)
    assert float(src.user_delay()) == pytest.approx(0.5)
    src.read_back_enabled(False)
    assert src.read_back_enabled() is False
    src.read_back_enabled(True)
    sense.range(1e-4)
    assert float(sense.range()) == pytest.approx(1e-4)
    sense.auto_range(True)
    assert sense.auto_range() is True
    sense.nplc(0.1)
    assert float(sense.nplc()) == pytest.approx(0.1)
    sense.four_wire_measurement(False)
    assert sense.four_wire_measurement() is False
    sense.auto_zero_enabled(False)
    assert sense.auto_zero_enabled() is False
    sense.auto_zero_once()
    sense.count(3)
    assert int(float(sense.count())) == 3
    sense.count(1)
    sense.user_number(1)
    sense.user_delay(0.25)
    assert float(sense.user_delay()) == pytest.approx(0.25)
    assert k.line_frequency() in (50, 60, "50", "60")
    k.clear_event_register()
    k.clear_event_log()
    for name, sub in k.submodules.items():  # the driver leaves user_number unset (USERNone?) elsewhere
        if name.startswith(("_source_", "_sense_")):
            sub.user_number(1)
    snap = k.snapshot(update=True)  # reads every gettable parameter
    assert snap["parameters"]["sense_function"]["value"] == "current"


def _sweep_2450_on_a_device(rb, k) -> None:
    """A current reading and a linear sweep on the device the matrix routes to the SMU."""
    w, a = rb.bench.wiring, rb.array
    src, sense = k.source, k.sense
    with rb.bench.lock:
        rb.bench.set_crosspoints({(w.smu_hi, w.word_lines[1]), (w.smu_lo, w.bit_lines[2])}, set())
    g = a.true_conductance_s([1 * a.cols + 2])[0]
    with k.output_enabled.set_to(True):
        i = sense.current()
        assert i == pytest.approx(0.2 * g, rel=0.05)
        src.sweep_setup(0.0, 0.3, 7)
        values = sense.sweep()  # :SOUR:SWE:VOLT:LIN, :INIT, *WAI, :TRAC:DATA? 1,7,'defbuffer1'
    assert np.allclose(values, np.linspace(0, 0.3, 7) * g, rtol=0.05, atol=1e-9)


def _use_2450_reading_buffers(rb, k) -> None:
    """The default buffer's elements, trigger and data; a buffer of our own made, resized and deleted."""
    buf = k.buffer("defbuffer1")
    buf.elements(["measurement", "source_value", "relative_time", "measurement_unit"])
    k.output_enabled(True)
    buf.trigger_start()
    k.output_enabled(False)
    assert buf.number_of_readings() == 1
    last = buf.get_last_reading().split(",")
    assert float(last[1]) == pytest.approx(0.3, rel=1e-3) and last[3] == "Amp DC"  # the sweep left 0.3 V
    data = buf.get_data(1, 1)
    assert len(data) == 4
    with k.buffer("mine", size=20, style="STANdard") as mine:  # style "": a trailing comma
        assert mine.size() == 20
        mine.size(50)
        assert mine.size() == 50
    assert k.ask("*OPC?") == "1"  # the delete (a write) has been executed
    assert "mine" not in rb.smu.buffers


def test_qcodes_keithley2450_parameters_sweep_and_buffer(rb):
    k = Keithley2450("qc_smu", rb.resources["smu"], visalib="@py", timeout=10)
    try:
        assert k.IDN()["model"] == "2450"  # QCoDeS strips "MODEL "
        _set_and_read_back_2450_parameters(k)
        _no_errors(rb.smu)
        _sweep_2450_on_a_device(rb, k)
        _use_2450_reading_buffers(rb, k)
        _no_errors(rb.smu)
    finally:
        k.close()
    assert rb.smu.output is False


def test_qcodes_keysight33522b_parameters(rb):
    g = Keysight33522B("qc_gen", rb.resources["pulse_generator"], visalib="@py", timeout=10)
    try:
        for ch in (g.ch1, g.ch2):
            ch.function_type("PULS")
            assert ch.function_type() == "PULS"
            ch.frequency_mode("CW")
            assert ch.frequency_mode() == "CW"
            ch.pulse_width(1e-6)
            assert float(ch.pulse_width()) == pytest.approx(1e-6)
            # width first: a 10 us period does not hold the default 100 us width (a -221 conflict)
            ch.frequency(1e5)
            assert float(ch.frequency()) == pytest.approx(1e5)
            ch.phase(90)
            assert float(ch.phase()) == pytest.approx(90)
            ch.amplitude_unit("VPP")
            assert ch.amplitude_unit() == "VPP"
            ch.amplitude(1.0)
            assert float(ch.amplitude()) == pytest.approx(1.0)
            ch.offset(0.1)
            assert float(ch.offset()) == pytest.approx(0.1)
            ch.ramp_symmetry(40)
            assert float(ch.ramp_symmetry()) == pytest.approx(40)
            ch.trigger_source("BUS")
            assert ch.trigger_source() == "BUS"
            ch.trigger_slope("NEG")
            assert ch.trigger_slope() == "NEG"
            ch.trigger_count(5)
            assert ch.trigger_count() == 5
            ch.trigger_delay(1e-3)
            assert float(ch.trigger_delay()) == pytest.approx(1e-3)
            ch.trigger_timer(2e-3)
            assert float(ch.trigger_timer()) == pytest.approx(2e-3)
            ch.output_polarity("INV")
            assert ch.output_polarity() == "INV"
            ch.output_polarity("NORM")
            ch.burst_state("ON")
            assert ch.burst_state() == "ON"
            ch.burst_mode("N Cycle")
            assert ch.burst_mode() == "N Cycle"
            ch.burst_ncycles(10)
            assert ch.burst_ncycles() == 10
            ch.burst_phase(45)
            assert float(ch.burst_phase()) == pytest.approx(45)
            ch.burst_polarity("INV")
            assert ch.burst_polarity() == "INV"
            ch.burst_int_period(1e-3)
            assert float(ch.burst_int_period()) == pytest.approx(1e-3)
            ch.output("OFF")
            assert ch.output() == "OFF"
        g.sync.output("ON")
        assert g.sync.output() == "ON"
        g.sync.source(2)
        assert g.sync.source() == 2
        g.sync_channel_phases()
        g.snapshot(update=True)
        assert rb.generator.error_count == 0, list(rb.generator._errors)
    finally:
        g.close()
