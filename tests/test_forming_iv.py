"""Forming and I-V sweeps under compliance: physics on the emulated array, limits on the Board."""

from __future__ import annotations

import numpy as np
import pytest

from drivers import LimitViolation, PulseBatch, open_board
from firmware_stub.array_model import MemristorArray
from firmware_stub.device_params import DeviceParams
from tests.waiting import HANG_GUARD_SEC


def test_unformed_devices_ignore_pulses_until_formed():
    a = MemristorArray(DeviceParams(unformed_fraction=1.0, stuck_fraction=0.0), 4, 8, seed=1)
    idx = np.arange(32)
    g0 = a.read_g(idx)
    assert np.all(g0 < 0.1e-6)
    a.apply_pulses(idx, np.full(32, 20), (1.6, 50e-9), (-1.8, 50e-9))
    assert np.all(a.read_g(idx) < 0.1e-6)
    formed = a.form(idx, 2.0, 1e-6, 100e-6)  # below the forming voltage (2.6 V +- 5 %)
    assert not formed.any()
    formed = a.form(idx, 3.2, 1e-6, 100e-6)
    assert formed.all()
    g = a.read_g(idx)
    np.testing.assert_allclose(np.median(g), 100e-6 / 3.2, rtol=0.1)  # compliance sets the formed state
    before = a.read_g(idx)
    a.apply_pulses(idx, np.full(32, -10), (1.6, 50e-9), (-1.8, 50e-9))
    assert np.median(a.read_g(idx) - before) < -2e-6


def test_iv_sweep_shows_set_under_compliance_and_reset():
    a = MemristorArray(DeviceParams(stuck_fraction=0.0), 4, 4, seed=2)
    up = np.linspace(0, 1.5, 31)
    down = np.linspace(1.5, -1.8, 67)
    back = np.linspace(-1.8, 0, 37)
    i = a.iv_sweep(np.arange(4), np.concatenate([up, down, back]), 1e-3, 50e-6)
    assert np.all(np.abs(i) <= 50e-6 + 1e-15)  # never beyond the compliance
    i_up = i[:, : up.size]
    assert np.all(i_up[:, -1] >= 45e-6)  # switched on and clamped at the compliance
    assert np.all(i_up[:, 5] < 5e-6)  # high resistance before the SET threshold
    g_end = a.read_g(np.arange(4))
    assert np.all(g_end < 15e-6)  # RESET by the negative branch


def test_board_forming_and_sweep_respect_the_limits():
    with open_board("emu?rows=4&cols=4") as b:
        sent = b.wire_bytes
        with pytest.raises(LimitViolation, match="max_form_v"):
            b.form([0], [0], 3.9, 1e-6, 100e-6)
        with pytest.raises(LimitViolation, match="compliance"):
            b.iv_sweep([0], [0], np.linspace(0, 1, 5), 1e-3, 5e-3)
        with pytest.raises(LimitViolation, match="sweep"):
            b.iv_sweep([0], [0], np.array([0.0, -3.0]), 1e-3, 1e-4)
        with pytest.raises(LimitViolation, match="duration"):
            b.iv_sweep([0], [0], np.linspace(0, 1, 5), 1.0, 1e-4)
        assert b.wire_bytes == sent
        cur = b.iv_sweep([1, 2], [1, 2], np.linspace(0, 1.2, 13), 1e-3, 30e-6)
        assert cur.shape == (2, 13) and np.all(np.abs(cur) <= 30e-6 + 1e-15)
        rep = b.form([3], [3], 3.0, 1e-6, 100e-6)
        assert rep.g_after_s.shape == (1,)
        b.pulse(PulseBatch(np.array([0]), np.array([0]), np.array([1])))  # the board still works


@pytest.mark.timing
def test_characterize_iv_sweep_and_forming_through_the_cli(tmp_path):
    import json
    import subprocess
    import sys

    toml = tmp_path / "unformed.toml"
    toml.write_text("unformed_fraction = 0.8\n")
    out = subprocess.run([sys.executable, "-m", "hil.cli", "characterize", "forming", "--board",
                          f"emu?rows=8&cols=8&config={toml}", "--out", str(tmp_path / "f")],
                         capture_output=True, text=True, timeout=HANG_GUARD_SEC)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout[out.stdout.index("{"):])
    assert res["formed_fraction"] >= 0.95 and 2.3 < res["v_form_median_v"] < 2.9  # stuck devices never form
    assert (tmp_path / "f" / "forming.h5").exists() and (tmp_path / "f" / "forming.png").exists()

    out = subprocess.run([sys.executable, "-m", "hil.cli", "characterize", "iv-sweep", "--board", "emu?rows=8&cols=8",
                          "--out", str(tmp_path / "iv"), "--compliance", "5e-5"], capture_output=True, text=True,
                         timeout=HANG_GUARD_SEC)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout[out.stdout.index("{"):])
    assert 0.8 <= res["v_set_median_v"] <= 1.2 and res["v_reset_median_v"] < -0.9
    assert res["on_off_ratio_median"] > 5

    refused = subprocess.run([sys.executable, "-m", "hil.cli", "characterize", "iv-sweep", "--board",
                              "emu?rows=8&cols=8", "--out", str(tmp_path / "x"), "--compliance", "0.5"],
                             capture_output=True, text=True, timeout=HANG_GUARD_SEC)
    assert refused.returncode == 2 and "compliance" in refused.stderr
