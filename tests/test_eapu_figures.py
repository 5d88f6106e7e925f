"""The issue's headline figures, on the default emulated device with seed 0 and 10 epochs.

Deterministic (everything is seeded), so these are not timing tests: they check
that EaPU keeps float accuracy while writing under 1 % of the devices per step,
and that it spends at least 20x less write energy than writing every update.
"""

from __future__ import annotations

import pytest

from hil.train import TrainConfig, train

BOARD = "emu"


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory) -> str:
    from calibration.run import CalibrationParams, calibrate
    from drivers import open_board

    out = tmp_path_factory.mktemp("cal")
    with open_board(BOARD) as board:
        calibrate(board, out, CalibrationParams(seed=0, plots=False), progress=False)
    return str(out / "calibration.json")


def _run(tmp_path, cal, task, method):
    cfg = TrainConfig(task=task, method=method, board=BOARD, epochs=10, seed=0, calibration=cal)
    return train(cfg, tmp_path / f"{task}-{method}", progress=False)


@pytest.mark.slow
def test_digits_eapu_matches_float_with_sparse_writes_and_less_energy_than_bp(tmp_path, calibration_file):
    flt = _run(tmp_path, calibration_file, "digits", "float")
    eapu = _run(tmp_path, calibration_file, "digits", "eapu")
    bp = _run(tmp_path, calibration_file, "digits", "bp")
    print(f"\nfloat {flt['test_accuracy']:.4f}  eapu {eapu['test_accuracy']:.4f} (write fraction "
          f"{eapu['write_fraction_mean']:.3%})  bp {bp['test_accuracy']:.4f}  energy bp/eapu "
          f"{bp['write_energy_j'] / eapu['write_energy_j']:.1f}x")
    assert eapu["test_accuracy"] >= flt["test_accuracy"] - 0.02
    assert eapu["write_fraction_mean"] <= 0.01
    assert bp["write_energy_j"] >= 20 * eapu["write_energy_j"]


@pytest.mark.slow
def test_denoise_eapu_ssim_within_0_02_of_float(tmp_path, calibration_file):
    flt = _run(tmp_path, calibration_file, "denoise", "float")
    eapu = _run(tmp_path, calibration_file, "denoise", "eapu")
    print(f"\nSSIM float {flt['test_ssim']:.4f}  eapu {eapu['test_ssim']:.4f} "
          f"(write fraction {eapu['write_fraction_mean']:.3%})")
    assert eapu["test_ssim"] >= flt["test_ssim"] - 0.02
