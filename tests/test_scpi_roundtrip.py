"""Every query reply of every emulated SCPI instrument is accepted back as its setting.

For each handler with both a query and a command form, the header is built in its
short form and in its long form (every node, optional ones included), queried, and the reply sent back as the setting:
the instrument must take it without any error.  This is what QCoDeS's snapshot-and-
restore and PyMeasure's read-modify-write rely on (``:SENS:FUNC?`` answers
``"CURR:DC"``; ``:SENS:FUNC "CURR:DC"`` must be accepted).
"""

from __future__ import annotations

import pytest

from firmware_stub.array_model import MemristorArray
from firmware_stub.device_params import DeviceParams
from firmware_stub.scpi.bench import EmulatedBench
from firmware_stub.scpi.keithley2450 import Keithley2450
from firmware_stub.scpi.keysight33500b import Keysight33500B

# handlers whose query needs arguments, whose setting is a value list, or that are query-and-event
SKIP = {"_emul_status"}


def _headers(cls) -> list[tuple[str, str]]:
    out = []
    for nodes, name, q_ok, w_ok in cls._table:
        if not (q_ok and w_ok) or name in SKIP:
            continue
        # every node, optional ones too: a bare ':FUNC' would name the source function, not the sense one
        short = ":" + ":".join(n.short for n in nodes)
        long = ":" + ":".join(n.long for n in nodes)
        out.append((name, short))
        out.append((name, long))
    return out


def _instrument(cls):
    bench = EmulatedBench(MemristorArray(DeviceParams(), 2, 2, seed=0))
    return cls(bench)


@pytest.mark.parametrize("cls", [Keithley2450, Keysight33500B])
def test_every_query_reply_is_accepted_back_as_a_setting(cls):
    inst = _instrument(cls)
    headers = _headers(cls)
    assert len(headers) > 40
    failures = []
    for name, header in headers:
        reply = inst.process(f"{header}?")
        errs = inst.process(":SYST:ERR:ALL?")
        if reply is None or not errs.lstrip("+").startswith("0,"):
            failures.append(f"{header}? -> {reply!r}, {errs}")
            continue
        inst.process(f"{header} {reply}")
        errs = inst.process(":SYST:ERR:ALL?")
        if not errs.lstrip("+").startswith("0,"):
            failures.append(f"{header} {reply} -> {errs}")
        again = inst.process(f"{header}?")
        if again != reply:
            failures.append(f"{header}: {reply!r} written back reads {again!r}")
    assert not failures, "\n".join(failures)


def test_compound_sense_function_short_and_long_forms():
    smu = _instrument(Keithley2450)
    for text in ('"CURR:DC"', '"CURRent:DC"', "'curr:dc'", '"VOLT:DC"', '"RES"', "CURR"):
        smu.process(f":SENS:FUNC {text}")
        assert smu.process(":SYST:ERR?") == '0,"No error"', text
    smu.process(':SENS:FUNC "CURR:DC"')
    assert smu.process(":SENS:FUNC?") == '"CURR:DC"'
    smu.process(':SENS:FUNC "CURR:AC"')
    assert smu.process(":SYST:ERR?").startswith("-224")


@pytest.mark.parametrize("value", ["INF", "-INF", "NAN", "maybe"])
def test_a_boolean_setting_refuses_what_is_not_a_boolean(value):
    """Numbers that are not finite are parameter errors (-224), not a crash of the emulator."""
    from protocols.scpi import ScpiError, parse_bool

    with pytest.raises(ScpiError) as err:
        parse_bool(value)
    assert err.value.code == -224
