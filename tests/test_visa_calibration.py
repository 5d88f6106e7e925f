"""Calibration on the VISA bench: the same procedures through real instrument drivers, and what a
dead instrument link in the middle of a calibration leaves behind."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from calibration.run import CalibrationParams, calibrate
from drivers import BoardError
from drivers.address import open_board
from firmware_stub.scpi.serve_bench import start_bench
from tests.waiting import HANG_GUARD_SEC

pytestmark = pytest.mark.timing  # real TCP to instrument servers in threads, a link lost mid-run

ROWS, COLS = 8, 12
PARAMS = CalibrationParams(seed=0, sample=24, plots=False)


@pytest.fixture
def served(tmp_path):
    running = start_bench(ROWS, COLS, seed=3)
    path = running.write_bench_file(tmp_path / "bench.toml", timeout_sec=HANG_GUARD_SEC)
    yield running, path
    running.stop()


def _idle(running) -> bool:
    with running.bench.lock:
        return (running.smu.output is False and not any(ch.output for ch in running.generator.ch.values())
                and running.bench.closed == set())


@pytest.mark.slow
@pytest.mark.timeout(600)  # thousands of SCPI exchanges on this CPU: 195 s seen on 2 cores at load 10
def test_calibration_runs_on_the_visa_bench(served, tmp_path):
    running, path = served
    with open_board(f"visa:{path}") as board:
        report = calibrate(board, tmp_path / "cal", PARAMS, progress=False)
        truth = board.true_parameters()
    assert (tmp_path / "cal" / "calibration.json").exists() and (tmp_path / "cal" / "calibration.h5").exists()
    # the instruments' settings the calibration ran with are on record, in the report and the raw file
    import json

    import h5py

    saved = json.loads((tmp_path / "cal" / "calibration.json").read_text())["instrument_settings"]
    smu = saved["instruments"]["smu"]
    assert "MODEL 2450" in smu["identity"]["model"] and smu["parameters"]["current_nplc"] == 1.0
    with h5py.File(tmp_path / "cal" / "calibration.h5") as f:
        assert json.loads(f.attrs["instrument_settings"])["instruments"]["smu"] == smu
    # a sample of 24 devices is far too small for the calibration issue's tolerances (see docs/RESULTS.md for
    # a full-size run); this checks that the figures come out, in the right units and range
    assert 0.5 < report.read_noise_rel / truth["read_noise_rel"] < 2
    assert 0.5 < report.pulse_step_mean_s["set"] / truth["mean_set_step_mid_s"] < 2
    assert 0.5 < report.write_noise_sigma_s / truth["sigma_w_s"] < 2
    assert report.delta_g_th_s > 0
    assert _idle(running)


@pytest.mark.slow
def test_a_lost_link_mid_calibration_stops_it_idle_and_keeps_the_finished_stages(served, tmp_path):
    running, path = served
    ticks = []

    def progress(k: float) -> None:  # drop the SMU's connection once the calibration is under way
        ticks.append(k)
        if len(ticks) == 40:
            running.servers["smu"].drop_connections()
            running.servers["smu"].drop_after(0)

    with open_board(f"visa:{path}") as board:
        with pytest.raises(BoardError) as info:
            calibrate(board, tmp_path / "cal", PARAMS, progress=progress)
    assert "2450" in str(info.value) or "SMU" in str(info.value)
    assert _idle(running)
    with h5py.File(tmp_path / "cal" / "calibration.h5", "r") as f:
        stages = list(f["stages"])
        assert "read_noise" in stages  # what was measured before the fault is on disk
        assert np.asarray(f["stages/read_noise/reads"]).size > 0
    assert not (tmp_path / "cal" / "calibration.json").exists()
