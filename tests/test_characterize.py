"""Characterization routines, the procedures one by one, the fits and ΔGth: on small emulated arrays."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from calibration import characterize as ch
from hil.cli import cli
from calibration.common import stage_rng
from calibration.fits import decay, discrete_alpha, fit_decay_profile
from calibration.read_noise import ReadNoiseParams, measure_read_noise
from calibration.stuck import StuckParams, map_stuck
from calibration.threshold import delta_g_threshold, snr1_pulses
from drivers.address import open_board
from drivers.errors import LimitViolation

BOARD = "emu?rows=32&cols=32&seed=1"


@pytest.fixture
def board():
    with open_board(BOARD) as b:
        yield b


def _h5_ok(path, stage):
    with h5py.File(path, "r") as f:
        assert json.loads(f.attrs["board_identity"])["rows"] == 32
        g = f["stages"][stage]
        assert g.attrs["complete"] and "result" in g.attrs and "params" in g.attrs and "stamp" in g.attrs
        assert all("units" in ds.attrs for ds in g.values())
        return {k: ds[()] for k, ds in g.items()}


def test_read_all_map_and_files(board, tmp_path):
    m = ch.run("read-all", board, ch.ReadAllParams(n_reads=4), tmp_path)
    assert m.raw["g"].shape == (32, 32) and m.result.min_s > 0
    assert 0.005 < m.result.read_noise_rel < 0.02  # default 1 %
    data = _h5_ok(tmp_path / "read_all.h5", "read_all")
    np.testing.assert_array_equal(data["g"], m.raw["g"])
    assert (tmp_path / "read_all.png").stat().st_size > 1000


def test_pulse_response_moves_both_ways(board, tmp_path):
    m = ch.run("pulse-response", board, ch.CharPulseResponseParams(n_devices=64, steps=12, cycles=2), tmp_path)
    r = m.result
    assert len(r.g_high_mean_s) == 2 and all(h > lo + 20e-6 for h, lo in zip(r.g_high_mean_s, r.g_low_mean_s))
    assert r.first_step_mean_s["set"] > 0 and r.first_step_mean_s["reset"] > 0
    assert m.raw["g"].shape == (2 * 2 * 12 + 1, 64)
    _h5_ok(tmp_path / "pulse_response.h5", "pulse_response")


def test_retention_shows_the_log_drift(board, tmp_path):
    m = ch.run("retention", board, ch.RetentionParams(n_devices=256, t_max_sec=1e5), tmp_path)
    assert m.result.times_sec[-1] == pytest.approx(1e5, rel=1e-3)
    assert 0.05e-6 < m.result.mu_s < 0.14e-6  # default 0.09 uS per ln(1+t)
    assert (tmp_path / "retention.png").exists()


def test_endurance_keeps_switching_before_wear_out(board, tmp_path):
    m = ch.run("endurance", board, ch.EnduranceParams(n_devices=16, cycles=30, pulses_per_cycle=64), tmp_path)
    assert m.result.cycles[-1] == 30 and m.result.pulses_per_device == 2 * 64 * 30
    assert m.result.failed_fraction < 0.1 and min(m.result.window_mean_s) > 10e-6


def test_program_a_target_map(board, tmp_path):
    targets = ch.target_pattern("checkerboard", (8, 16), 20e-6, 60e-6)
    m = ch.run("program", board, ch.ProgramParams(region=(4, 8, 8, 16), tolerance_s=1.5e-6), tmp_path,
               targets_s=targets)
    assert m.result.n_devices == 128 and m.result.converged_fraction > 0.9
    ok = m.raw["converged"]
    assert np.median(np.abs(m.raw["final"] - targets)[ok]) < 2e-6
    with pytest.raises(ValueError, match="shape"):
        ch.program_map(board, np.zeros((3, 3)), ch.ProgramParams(region=(0, 0, 4, 4)))


def test_characterize_cli(tmp_path):
    r = CliRunner().invoke(cli, ["characterize", "read-all", "--board", BOARD, "--out", str(tmp_path),
                                             "--reads", "2", "--region", "0,0,8,8"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.split("\n", 1)[1])["rows"] == 8
    r = CliRunner().invoke(cli, ["characterize", "program", "--board", BOARD, "--out", str(tmp_path),
                                             "--pattern", "gradient", "--region", "0,0,4,4"])
    assert r.exit_code == 0, r.output
    np.save(tmp_path / "t.npy", np.full((2, 2), 30e-6))
    r = CliRunner().invoke(cli, ["characterize", "program", "--board", BOARD, "--out", str(tmp_path),
                                             "--targets", str(tmp_path / "t.npy"), "--region", "1,1,2,2",
                                             "--overwrite"])  # program.h5 of the first program is replaced
    assert r.exit_code == 0, r.output
    for bad, msg in ((["--region", "1,2"], "ROW0,COL0,ROWS,COLS"), (["--region", "0,0,64,64"], "outside"),
                     (["--set-amplitude", "9"], "SET amplitude +9.000 V")):
        r = CliRunner().invoke(cli, ["characterize", "read-all", "--board", BOARD,
                                                 "--out", str(tmp_path / "bad"), *bad])
        assert r.exit_code == 2 and r.stderr.startswith("error: ") and msg in r.stderr, r.output
    r = CliRunner().invoke(cli, ["characterize", "program", "--board", BOARD, "--out", str(tmp_path)])
    assert r.exit_code == 2 and "exactly one of --targets" in r.stderr


# ---- procedures on their own --------------------------------------------------------------------------
def test_read_noise_procedure(board):
    m = measure_read_noise(board, ReadNoiseParams(n_devices=512, n_reads=16, seed=3))
    assert m.raw["reads"].shape == (16, 512)
    assert abs(m.result.read_noise_rel - 0.01) < 5 * m.result.read_noise_rel_sigma + 1e-4
    with pytest.raises(ValueError, match="only 1024 are available"):
        measure_read_noise(board, ReadNoiseParams(n_devices=2000))


def test_stuck_map_finds_exactly_the_stuck_devices(tmp_path):
    cfg = tmp_path / "d.toml"
    cfg.write_text("stuck_fraction = 0.1\nalpha_set_s = 0.4e-6\nsigma_w_s = 2e-6\n")  # weak steps, big offsets
    with open_board(f"emu?rows=48&cols=48&seed=2&config={cfg}") as b:
        m = map_stuck(b, StuckParams())
        truth = b.true_parameters()["stuck_fraction_actual"]
    assert m.result.stuck_fraction == pytest.approx(truth, abs=2 / 48**2)
    assert m.result.n_stuck_high + m.result.n_stuck_low == m.result.n_stuck
    assert m.raw["stuck"].shape == (48, 48)


def test_pulses_beyond_the_per_batch_limit_are_refused_or_split(board):
    from calibration.common import pulse_devices

    flat = np.arange(4)
    with pytest.raises(ValueError, match="max_pulses_per_device"):
        pulse_devices(board, flat, 300)
    assert pulse_devices(board, flat, 300, split=True) == 2
    board.set_profiles(board.profiles[0], board.profiles[1])
    with pytest.raises(LimitViolation):
        from drivers.limits import PulseProfile

        board.set_profiles(PulseProfile(amplitude_v=3.5, width_sec=50e-9), board.profiles[1])


def test_stage_rng_is_fixed_by_seed_and_stage():
    a = stage_rng(1, "x").integers(0, 1 << 30, 4)
    assert np.array_equal(a, stage_rng(1, "x").integers(0, 1 << 30, 4))
    assert not np.array_equal(a, stage_rng(2, "x").integers(0, 1 << 30, 4))
    assert not np.array_equal(a, stage_rng(1, "y").integers(0, 1 << 30, 4))


# ---- fits and ΔGth ---------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [1.0, 1.6, 0.7])
def test_soft_bounds_fit_recovers_a_known_curve(gamma):
    rng = np.random.default_rng(0)
    n_dev, w, alpha = 200, 99e-6, rng.uniform(0.6e-6, 1.4e-6, 200)
    g = np.full(n_dev, 2e-6)
    curve = [g.copy()]
    for _ in range(40):  # discrete soft-bounds pulses of 8, noise-free law
        for _ in range(8):
            g = g + alpha * np.clip((101e-6 - g) / w, 0, 1) ** gamma
        curve.append(g.copy())
    y = np.array(curve).T + rng.normal(0, 0.3e-6, (n_dev, 41))
    fit = fit_decay_profile(np.arange(41) * 8.0, y, -1.0)
    assert fit.gamma == pytest.approx(gamma, rel=0.08)
    a_hat = discrete_alpha(fit.c, fit.gamma, np.full(n_dev, w))
    assert np.median(a_hat / alpha) == pytest.approx(1.0, abs=0.06)
    assert np.median(fit.bound_s) == pytest.approx(101e-6, rel=0.02)
    v, dv0, dc = decay(np.array([50.0]), np.array([0.01]), gamma, np.array([10.0]))
    assert v[0] < 50 and dv0[0] > 0 and dc[0] < 0


def test_delta_g_threshold_is_the_snr1_point():
    mu, s, c = 0.5e-6, 1.08e-6, 1.0
    n = float(snr1_pulses(mu, s, c * mu))
    assert mu * n == pytest.approx(math.sqrt(s**2 + n * (c * mu) ** 2), rel=1e-12)
    base = dict(step_mid_s={"set": mu, "reset": 0.6e-6}, step_mid_sigma_s={"set": 5e-9, "reset": 5e-9},
                write_noise_s=s, c2c_rel=c, boot_s=np.full(50, s), boot_c2c_rel=np.full(50, c))
    th = delta_g_threshold(**base)
    assert th.delta_g_th_s == max(v["delta_g_th_s"] for v in th.by_polarity.values())
    assert th.quantum_pulses_by_polarity["set"] == max(1, round(th.delta_g_th_s / mu))
    assert th.quantum_pulses == max(th.quantum_pulses_by_polarity.values())
    assert delta_g_threshold(**base, snr1_multiple=1.5).delta_g_th_s == pytest.approx(1.5 * th.delta_g_th_s)
    drifted = delta_g_threshold(**base, drift_delay_sec=3600.0, drift_sigma1_s=0.04e-6)
    assert drifted.delta_g_th_s > th.delta_g_th_s
    assert drifted.drift_sigma_s == pytest.approx(0.04e-6 * math.log1p(3600.0))
    # the relaxation offset at t ~ 0 is read-visible, not stored: it counts only at a stated delay
    assert delta_g_threshold(**base, relax_sigma0_s=0.4e-6).delta_g_th_s == th.delta_g_th_s
    at_zero = delta_g_threshold(**base, relax_sigma0_s=0.4e-6, drift_delay_sec=0.0)
    assert at_zero.drift_sigma_s == pytest.approx(0.4e-6)
    relaxed = delta_g_threshold(**base, relax_sigma0_s=0.4e-6, drift_delay_sec=3600.0, drift_sigma1_s=0.04e-6)
    assert relaxed.drift_sigma_s == pytest.approx(0.4e-6 + 0.04e-6 * math.log1p(3600.0))
    with pytest.raises(ValueError, match="multiple of the SNR=1 change must be positive"):
        delta_g_threshold(**base, snr1_multiple=0)
