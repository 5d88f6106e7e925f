"""I-V sweeps and forming on the VISA bench, through the SMU, against the served emulators.

The SMU's own command log (what reached the emulated 2450 over TCP) shows, for every
device, the compliance written and read back while the output is off, and only then
the output turned on; a dwell the SMU cannot hold is refused before any byte is sent.
``hil characterize iv-sweep|forming --board visa:FILE`` run in a separate process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from calibration import characterize as ch
from drivers.errors import LimitViolation
from drivers.visa_bench import VisaBenchBoard
from firmware_stub.device_params import DeviceParams
from firmware_stub.scpi.serve_bench import start_bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def rb():
    running = start_bench(3, 4, seed=5, params=DeviceParams(unformed_fraction=0.5, stuck_fraction=0.0))
    yield running
    running.stop()


@pytest.fixture
def bench_file(rb, tmp_path):
    return rb.write_bench_file(tmp_path / "bench.toml")


def _output_on_windows(log: list[str]) -> list[tuple[int, int]]:
    """(index of the output-on line, index of the next output-off line) for each time the output went on."""
    out, start = [], None
    for k, line in enumerate(log):
        u = line.upper().replace(" ", "")
        if start is None and (u.startswith(":OUTP1") or u.startswith(":OUTPON")):
            start = k
        elif start is not None and (u.startswith(":OUTP0") or u.startswith(":OUTPOFF")):
            out.append((start, k))
            start = None
    assert start is None, "the output was left on"
    return out


def test_iv_sweep_sets_and_checks_compliance_before_the_output_turns_on(rb, bench_file):
    compliance = 60e-6
    with VisaBenchBoard.from_file(bench_file) as board:
        mark = len(rb.smu.log)
        rows, cols = np.array([0, 2]), np.array([1, 3])
        volts = np.concatenate([np.linspace(0, 1.5, 16), np.linspace(1.5, -1.8, 34), np.linspace(-1.8, 0, 19)])
        cur = board.iv_sweep(rows, cols, volts, 1e-3, compliance)
        log = rb.smu.log[mark:]
    assert cur.shape == (2, volts.size)
    assert np.all(np.abs(cur) <= compliance * (1 + 1e-9))
    windows = _output_on_windows(log)
    assert len(windows) == 2  # one per device, each alone on the SMU
    for on, off in windows:
        before = [line.upper() for line in log[:on]]
        set_at = max(k for k, line in enumerate(before) if line.startswith(":SOUR:VOLT:ILIM ") and
                     float(line.split()[1]) == pytest.approx(compliance))
        assert any(line.startswith(":SOUR:VOLT:ILIM?") for line in before[set_at:]), "limit not read back"
        # the levels are set only while the output is on, and the steps are read one by one
        levels = [float(line.split()[1]) for line in log[on:off] if line.upper().startswith(":SOUR:VOLT ")]
        assert levels == pytest.approx(volts.tolist())
    # the devices really switched: a SET on the rising branch, a higher current after it at the same voltage
    k02 = int(np.argmin(np.abs(volts[:16] - 0.2)))
    k02_after = 16 + int(np.argmin(np.abs(volts[16:50] - 0.2)))
    assert np.all(np.abs(cur[:, k02_after]) > np.abs(cur[:, k02]))
    assert rb.smu.output is False and not rb.bench.closed  # idle afterwards


def test_iv_sweep_and_forming_refuse_a_dwell_the_smu_cannot_hold_before_sending_anything(rb, bench_file):
    with VisaBenchBoard.from_file(bench_file) as board:
        n_smu, n_mx = len(rb.smu.log), len(rb.matrix.log)
        with pytest.raises(LimitViolation, match="power-line cycles"):
            board.iv_sweep(np.array([0]), np.array([0]), np.array([0.0, 0.5]), 50e-6, 1e-4)
        with pytest.raises(LimitViolation, match="forming time"):
            board.form(np.array([0]), np.array([0]), 2.5, 1e-6, 1e-4)
        assert len(rb.smu.log) == n_smu and len(rb.matrix.log) == n_mx


def test_forming_forms_the_unformed_devices_under_compliance(rb, bench_file):
    a = rb.array
    unformed0 = a.unformed.copy()
    assert unformed0.any()
    with VisaBenchBoard.from_file(bench_file) as board:
        m = ch.run("forming", board, ch.FormingParams(width_sec=1e-3, v_stop_v=3.0, compliance_a=50e-6))
    r = m.result
    assert not a.unformed.any()  # every device reached its forming voltage below 3 V
    g_after = np.asarray(m.raw["g_after"])
    formed_now = unformed0.reshape(-1)
    # a newly formed device holds about compliance / V_form: 50 uA / 2..3 V = 17..25 uS, within read noise
    assert np.all(g_after[formed_now] > 10e-6) and np.all(g_after[formed_now] < 30e-6)
    assert r.n_devices == 12 and r.formed_fraction == 1.0


@pytest.mark.parametrize("name,args", [
    ("iv-sweep", ["--devices", "2", "--dwell", "1e-3"]),
    ("forming", ["--width", "1e-3", "--v-stop", "3.0"]),
])
def test_hil_characterize_on_a_visa_bench(rb, bench_file, tmp_path, name, args):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "hil.cli", "characterize", name, "--board", f"visa:{bench_file}",
                           "--out", str(out), *args], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with h5py.File(out / f"{name.replace('-', '_')}.h5") as f:
        assert f.attrs or len(f.keys())
    assert rb.smu.output is False and not rb.bench.closed
