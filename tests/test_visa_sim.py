"""pyvisa-sim conformance of the instrument drivers (drivers/sim/*.yaml, written from the manuals).

Every command a driver sends must be in the simulated instrument's command set: an
unknown one lands in the simulated error queue (-113 / TSP syntax error) and the
driver's own error check fails.  Identity and command-set checks refuse the wrong
instrument; validators refuse out-of-range settings before anything is sent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pyvisa

from drivers.errors import InstrumentError, LimitViolation
from drivers.instruments import IdentityError, Keithley707B, Keithley2450, Keysight33500B

SIM = Path(__file__).resolve().parents[1] / "drivers" / "sim"
pytest.importorskip("pyvisa_sim")


def _rm(name: str) -> pyvisa.ResourceManager:
    return pyvisa.ResourceManager(f"{SIM / name}@sim")


def test_the_yaml_files_load():
    for name in ("keithley2450.yaml", "keysight33500b.yaml", "keithley707b.yaml"):
        rm = _rm(name)
        assert len(rm.list_resources("?*")) >= 2
        rm.close()


def test_keithley2450_command_set_conformance():
    rm = _rm("keithley2450.yaml")
    smu = Keithley2450.open(rm, "TCPIP0::10.0.0.20::5025::SOCKET")
    assert smu.identity.model == "MODEL 2450" and smu.identity.serial_number == "04412345"
    smu.configure_read(voltage_v=0.2, current_range_a=1e-4, compliance_a=1e-3, nplc=1.0, off_mode="NORM")
    assert smu.current_limit == pytest.approx(1e-3)
    assert smu.source_voltage == pytest.approx(0.2)
    assert smu.source_voltage_range == pytest.approx(0.2)
    assert smu.current_range == pytest.approx(1e-4)
    assert smu.current_nplc == pytest.approx(1.0)
    assert smu.sense_function == "CURR:DC"
    assert smu.output_off_mode == "NORM"
    assert smu.read_current() == pytest.approx(2e-6)
    assert smu.output_enabled is False  # on only for the reading
    smu.read_current(switch_output=False)
    smu.shutdown()
    assert smu.source_voltage == 0.0
    smu.check_errors()  # every command above is in the 2450's command set
    smu.write(":SOUR:VOLT:LEVEL:BOGUS 1")
    with pytest.raises(InstrumentError, match="-113"):
        smu.check_errors()
    smu.close()


def test_keysight33500b_command_set_conformance():
    rm = _rm("keysight33500b.yaml")
    gen = Keysight33500B.open(rm, "TCPIP0::10.0.0.21::5025::SOCKET", channel=1)
    gen.configure_pulser(limit_high_v=2.5, edge_time_sec=8.4e-9)
    assert gen.function == "PULS" and gen.load == float("inf")
    assert gen.low_level == 0.0 and gen.limit_high == 2.5 and gen.limit_low == 0.0 and gen.limits_enabled
    assert gen.burst_enabled and gen.burst_mode == "TRIG" and gen.trigger_source == "BUS"
    gen.set_pulse(1.6, 50e-9, 1e-6)  # shrinking: width first, then period
    assert (gen.pulse_width, gen.pulse_period, gen.high_level) == (50e-9, 1e-6, 1.6)
    gen.output_enabled = True
    gen.fire_burst(20)  # *TRG, *OPC?, SYST:ERR?
    gen.fire_burst(20)
    assert gen.burst_cycles == 20
    gen.set_pulse(1.8, 2e-6, 1e-5)  # growing: period first, then width
    assert (gen.pulse_width, gen.pulse_period) == (2e-6, 1e-5)
    gen.shutdown()
    assert gen.output_enabled is False
    gen.check_errors()
    gen.close()


def test_keithley707b_command_set_conformance():
    rm = _rm("keithley707b.yaml")
    mx = Keithley707B.open(rm, "TCPIP0::10.0.0.22::5025::SOCKET")
    assert mx.identity.model == "Model 707B"
    mx.configure()
    assert mx.connect_rule == "BREAK_BEFORE_MAKE"
    mx.route(["1A01", "1B05"])  # closes exactly these and reads them back
    mx.open_all()
    assert mx.closed_channels() == set()
    assert mx.errors() == []
    assert mx.next_error() == (0, "Queue Is Empty")
    mx.write("channel.bogus()")
    assert mx.next_error()[0] == -285
    with pytest.raises(ValueError):
        mx.route(["1Z01"])  # not a crosspoint: refused by the driver, nothing sent
    mx.close()


@pytest.mark.parametrize("yaml, cls, resource, match", [
    ("keithley2450.yaml", Keithley2450, "TCPIP0::10.0.0.29::5025::SOCKET", "MODEL 2400"),
    ("keithley2450.yaml", Keithley2450, "TCPIP0::10.0.0.28::5025::SOCKET", "TSP command set"),
    ("keysight33500b.yaml", Keysight33500B, "TCPIP0::10.0.0.39::5025::SOCKET", "33250A"),
    ("keithley707b.yaml", Keithley707B, "TCPIP0::10.0.0.49::5025::SOCKET", "3706A"),
])
def test_drivers_refuse_the_wrong_instrument(yaml, cls, resource, match):
    rm = _rm(yaml)
    with pytest.raises(IdentityError, match=match):
        cls.open(rm, resource)
    rm.close()


def test_validators_refuse_before_sending():
    rm = _rm("keithley2450.yaml")
    smu = Keithley2450.open(rm, "TCPIP0::10.0.0.20::5025::SOCKET")
    sent = smu.messages
    with pytest.raises(LimitViolation, match="current_limit"):
        smu.current_limit = 2.0  # beyond the 2450's 1.05 A
    with pytest.raises(LimitViolation, match="current_nplc"):
        smu.current_nplc = 20
    with pytest.raises(LimitViolation):
        smu.output_off_mode = "FLOAT"
    with pytest.raises(LimitViolation):
        smu.configure_read(voltage_v=0.2, current_range_a=1e-4, compliance_a=5.0, nplc=1.0)
    assert smu.messages == sent  # nothing reached the instrument
    with pytest.raises(AttributeError):
        smu.current_limit_tripped = True  # read-only
    rm.close()
    rm = _rm("keysight33500b.yaml")
    gen = Keysight33500B.open(rm, "TCPIP0::10.0.0.21::5025::SOCKET")
    sent = gen.messages
    with pytest.raises(LimitViolation):
        gen.set_pulse(1.6, 5e-9, 1e-6)  # narrower than the 16 ns minimum
    with pytest.raises(LimitViolation):
        gen.set_pulse(12.0, 50e-9, 1e-6)  # beyond +-10 V
    with pytest.raises(LimitViolation):
        gen.fire_burst(0)
    assert gen.messages == sent
    rm.close()
