"""The stage registry: what the run, the HDF5 file and the report take from it; the renamed ΔGth factor."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from calibration.report import CalibrationReport
from calibration.run import H5_NAME, JSON_NAME, STAGES, CalibrationParams, calibrate
from calibration.stages import BY_NAME, REGISTRY
from calibration.storage import RawStore
from drivers.address import open_board

ADDRESS = "emu?rows=32&cols=32&seed=5"


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "out"
    with open_board(ADDRESS) as board:
        report = calibrate(board, out, CalibrationParams(seed=5, sample=64, delta_g_th_snr1_multiple=1.5, plots=True),
                           progress=False)
    return out, report


def test_the_registry_fixes_the_order_and_the_parameter_fields():
    assert STAGES == tuple(s.name for s in REGISTRY)
    for stage in REGISTRY:
        assert CalibrationParams.model_fields[stage.params_field].annotation is stage.params_model
    names = [s.name for s in REGISTRY]
    for stage in REGISTRY:
        assert all(names.index(n) < names.index(stage.name) for n in stage.needs)


def test_the_file_holds_each_stage_with_exactly_its_declared_datasets(calibrated):
    out, report = calibrated
    with h5py.File(out / H5_NAME, "r") as f:
        assert list(f["stages"]) == sorted(STAGES)
        for stage in REGISTRY:
            g = f["stages"][stage.name]
            assert sorted(g) == sorted(stage.datasets)
            assert bool(g.attrs["complete"])
            assert stage.result_model.model_validate_json(g.attrs["result"]) == report_stage(report, stage)
    assert sorted(report.sample["devices_in_raw_file"]) == sorted(s.name for s in REGISTRY if "devices" in s.datasets)
    assert sorted(report.run["files"]["plots"]) == sorted(f"{n}.png" for n in
                                                          ("read_noise", "conductance_map", "pulse_response",
                                                           "write_noise", "drift"))


def report_stage(report: CalibrationReport, stage):
    return stage.result_model.model_validate(report.stages[stage.name])


def test_the_snr1_multiple_scales_delta_g_th_and_is_reported(calibrated):
    _, report = calibrated
    assert report.delta_g_th_snr1_multiple == 1.5
    assert report.params["delta_g_th_snr1_multiple"] == 1.5
    for pol in ("set", "reset"):
        v = report.delta_g_th_by_polarity[pol]
        assert v["delta_g_th_s"] == pytest.approx(1.5 * v["step_mid_s"] * v["snr1_pulses"], rel=1e-12)


def test_older_files_with_k_are_read_and_resumed(calibrated, tmp_path):
    out, report = calibrated
    # calibration.json of an older version: the factor was delta_g_th_k
    old = json.loads((out / JSON_NAME).read_text())
    old["delta_g_th_k"] = old.pop("delta_g_th_snr1_multiple")
    old["params"]["k"] = old["params"].pop("delta_g_th_snr1_multiple")
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = CalibrationReport.load(tmp_path / "old.json")
    assert loaded.delta_g_th_snr1_multiple == 1.5
    assert "delta_g_th_k" not in loaded.model_dump()
    assert CalibrationParams.model_validate(old["params"]) == CalibrationParams.model_validate(report.params)
    # calibration.h5 of an older version (parameters stored with k): resumed, not refused
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(out / H5_NAME, again / H5_NAME)
    with h5py.File(again / H5_NAME, "r+") as f:
        params = json.loads(f.attrs["params"])
        params["k"] = params.pop("delta_g_th_snr1_multiple")
        f.attrs["params"] = json.dumps(params, sort_keys=True)
    with open_board(ADDRESS) as board:
        resumed = calibrate(board, again, CalibrationParams(seed=5, sample=64, k=1.5, plots=True), resume=True,
                            progress=False)
    assert resumed.run["resumed_stages"] == list(STAGES)
    assert resumed.deterministic() == report.deterministic()


def test_the_write_noise_walk_is_reported_and_its_pulses_counted(calibrated):
    """The random walk (calibration.write_walk) ran on the usable write-noise devices: its figures in the report,
    its reads in the file, and its partial pulses in both the stage's sample and the pulses-per-device map."""
    out, report = calibrated
    wn = report.stages["write_noise"]
    walk = wn["walk"]
    assert walk is not None and walk["events"] >= 16 and walk["n_devices"] >= 8
    assert wn["moment_sigma_w_s"] > 0 and 0.0 <= walk["moment_weight"] <= 1.0
    lo, hi = sorted((wn["moment_sigma_w_s"], walk["sigma_w_s"]))
    assert lo <= report.write_noise_sigma_s <= hi  # a weighted mean of the two
    with h5py.File(out / H5_NAME, "r") as f:
        g = f["stages/write_noise"]
        assert g["walk_g"].shape == (walk["events"] // walk["checkpoint_events"] + 1, walk["n_devices"])
        assert g["boot_sigma_w_s"].shape == g["boot_sigma_w_walk_s"].shape == g["boot_sigma_w_moment_s"].shape
    _, raw, _ = RawStore(out / H5_NAME).load_stage("write_noise")
    stage_pulses = report.sample["write_noise"]["pulses_total"]
    assert stage_pulses == (report.sample["write_noise"]["n_devices"] * int(np.abs(raw["event_pulses"]).sum())
                            + walk["n_devices"] * (walk["events"] + 1))
    params = CalibrationParams.model_validate(report.params).write_noise
    assert int(BY_NAME["write_noise"].pulses(params, raw, 32 * 32).sum()) == stage_pulses  # the pulses-per-device map
