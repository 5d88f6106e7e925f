"""Board.settings_snapshot(): what a VISA bench's instruments are set to, recorded with every measurement.

On the served emulators the snapshot must report what the instruments really hold
(checked against the emulators' own state), and a characterization writes it into
its HDF5 file; an emulated FPGA board reports its own identity, limits and profiles.
"""

from __future__ import annotations

import json

import h5py
import pytest

from calibration import characterize as ch
from drivers.address import open_board
from drivers.visa_bench import VisaBenchBoard
from firmware_stub.scpi.serve_bench import start_bench


@pytest.fixture
def rb():
    running = start_bench(3, 4, seed=7)
    yield running
    running.stop()


def test_visa_snapshot_reports_what_the_instruments_hold(rb, tmp_path):
    path = rb.write_bench_file(tmp_path / "bench.toml")
    with VisaBenchBoard.from_file(path) as board:
        snap = board.settings_snapshot()
        smu, gen, mx = (snap["instruments"][k] for k in ("smu", "pulse_generator", "switch_matrix"))
        assert smu["identity"]["serial_number"] == rb.smu.serial_number
        p = smu["parameters"]
        assert p["current_limit"] == pytest.approx(rb.smu.ilim)
        assert p["current_range"] == pytest.approx(rb.smu.sense_range["CURR"])
        assert p["current_nplc"] == pytest.approx(rb.smu.nplc["CURR"])
        assert p["source_voltage"] == pytest.approx(rb.smu.level["VOLT"]) and p["output_enabled"] is False
        assert p["output_off_mode"] == rb.smu.off_mode["VOLT"] and p["terminals"] == rb.smu.terminals
        g = gen["parameters"]
        c1 = rb.generator.ch[1]
        assert g["edge_time"] == pytest.approx(c1.pulse_edge) and g["limit_high"] == pytest.approx(c1.lim_high)
        assert g["limits_enabled"] is c1.lim_on and g["output_enabled"] is False
        assert gen["identity"]["model"] == "33522B"
        assert mx["parameters"]["connect_rule"] == "BREAK_BEFORE_MAKE" and mx["parameters"]["closed_channels"] == []
        assert snap["limits"] == board.limits.model_dump()
        assert "_errors" not in p and "_errors" not in g
        ch.run("read-all", board, ch.ReadAllParams(region=(0, 0, 2, 2)), out_dir=tmp_path / "out")
    with h5py.File(tmp_path / "out" / "read_all.h5") as f:
        stored = json.loads(f.attrs["instrument_settings"])
    assert stored["instruments"]["smu"]["parameters"] == json.loads(json.dumps(p))


def test_emulator_snapshot_is_its_own_info():
    with open_board("emu?rows=4&cols=4&seed=1") as board:
        snap = board.settings_snapshot()
    assert snap["kind"] == board.info.kind and snap["instruments"] == {}
    assert snap["hardware_limits"] == board.info.hardware_limits.model_dump()
    assert set(snap["profiles"]) == {"set", "reset"}
