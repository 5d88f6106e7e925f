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
from tests.waiting import HANG_GUARD_S  # noqa: E402

pytestmark = pytest.mark.timing  # real TCP to instrument servers in threads

KW = dict(visa_library="@py", read_termination="\n", write_termination="\n", timeout=int(HANG_GUARD_S * 1000))


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
