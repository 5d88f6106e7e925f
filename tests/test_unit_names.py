"""Issue 12: siemens ``_s``, seconds ``_sec``; files written before the rename still load, the wire is unchanged.

Old names are built with :func:`protocols.unit_names.old_name` so that the rename script
(which rewrites every old seconds name it finds) leaves this file as it is.
"""

from __future__ import annotations

import numpy as np

from calibration.characterize_dc import IvSweepParams
from calibration.report import DriftModel
from calibration.run import CalibrationParams
from drivers.bench_file import parse_bench_file
from drivers.limits import load_limits
from firmware_stub.device_params import load_device_params
from hil.sweep_spec import SweepSpec
from hil.training.config import TrainConfig
from hil.training.plan import PREFIX, StepPlan
from protocols.opcodes import decode_json, encode_json
from protocols.unit_names import SECONDS_STEMS, from_wire, new_name, old_name, to_wire
from tests.test_visa_bench import GOOD


def test_old_and_new_names_map_one_to_one_and_leave_conductances_alone():
    assert old_name("min_pulse_width_sec") == "min_pulse_width" + "_s"
    assert new_name("device.relax_t0" + "_s") == "device.relax_t0_sec"
    for siemens in ("delta_g_th_s", "g_min_s", "step_s", "mu_s", "sigma_w_s", "write_noise_sigma_s", "board_time_s",
                    "wall_s", "pulse_batches_per_s"):
        assert new_name(siemens) == siemens
    assert all(not s.endswith("_s") for s in SECONDS_STEMS)


def test_json_on_the_wire_keeps_the_version_3_keys():
    info = {"timing_resolution_sec": 1e-10, "g_lsb_s": 1e-8, "limits": {"min_pulse_width_sec": 1e-12},
            "derived_keys": ["clock_sec", "g_max_mean_s"]}
    wire = encode_json(info)
    assert b"_sec" not in wire and b'"timing_resolution' + b'_s"' in wire and b'"g_lsb_s"' in wire
    assert decode_json(wire, "test") == info
    assert from_wire(to_wire(info)) == info


def test_a_limits_file_from_before_the_rename_loads(tmp_path):
    p = tmp_path / "limits.toml"
    p.write_text(f"{old_name('min_pulse_width_sec')} = 2e-8\n{old_name('max_pulse_width_sec')} = 1e-4\n")
    lim = load_limits(p)
    assert (lim.min_pulse_width_sec, lim.max_pulse_width_sec) == (2e-8, 1e-4)


def test_a_device_file_from_before_the_rename_loads(tmp_path):
    p = tmp_path / "device.toml"
    p.write_text(f"[device]\n{old_name('relax_t0_sec')} = 3.0\n{old_name('t_read_sec')} = 2e-7\nsigma_w_s = 2e-6\n")
    d = load_device_params(p)
    assert (d.relax_t0_sec, d.t_read_sec, d.sigma_w_s) == (3.0, 2e-7, 2e-6)


def test_a_bench_file_from_before_the_rename_loads():
    text = GOOD.replace("[bench]", f"[bench]\n{old_name('timeout_sec')} = 0.7", 1)
    assert parse_bench_file(text).bench.timeout_sec == 0.7


def test_calibration_files_and_parameters_from_before_the_rename_load():
    drift = DriftModel.model_validate({"mu_s": 1e-8, "sigma1_s": 2e-8, old_name("t0_sec"): 5.0})
    assert (drift.mu_s, drift.t0_sec) == (1e-8, 5.0)
    assert IvSweepParams.model_validate({old_name("dwell_sec"): 2e-3}).dwell_sec == 2e-3
    assert IvSweepParams.model_validate({"step_s": 3e-3}).dwell_sec == 3e-3  # the name before dwell
    today = CalibrationParams(drift_delay_sec=60.0).fingerprint()
    stored = {old_name(k) if k == "drift_delay_sec" else k: v for k, v in today.items()}
    stored["drift"] = {old_name(k): v for k, v in today["drift"].items()}
    assert stored != today and CalibrationParams.upgrade_fingerprint(stored) == today
    assert CalibrationParams.model_validate(stored).drift_delay_sec == 60.0


def test_a_run_config_and_a_sweep_spec_from_before_the_rename_load():
    assert TrainConfig.model_validate({old_name("host_step_sec"): 0.2}).host_step_sec == 0.2
    spec = SweepSpec.model_validate({"base": {old_name("host_step_sec"): 0.1},
                                     "grid": {"device." + old_name("relax_t0_sec"): [1.0, 2.0]}})
    assert spec.base == {"host_step_sec": 0.1} and list(spec.grid) == ["device.relax_t0_sec"]


def test_a_checkpoint_from_before_the_rename_resumes_its_pending_widths():
    widths = np.array([1e-9, 2e-9])
    arrays = {PREFIX + "flat": np.array([0, 1]), PREFIX + "counts": np.array([1, -1]),
              PREFIX + old_name("last_width_sec"): widths}
    plan = StepPlan.from_checkpoint({"tag": 7, "record": {}}, arrays)
    assert np.array_equal(plan.last_width_sec, widths)
