"""The ``hil`` command line as a user runs it: separate processes, real pty and TCP."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.waiting import HANG_GUARD_SEC, stop_process

pytestmark = pytest.mark.timing  # separate processes, signals, real pty and TCP

HIL = [sys.executable, "-m", "hil.cli"]


def run_hil(*args: str, timeout: float = HANG_GUARD_SEC) -> subprocess.CompletedProcess:
    return subprocess.run([*HIL, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(params=["tcp", "pty"])
def served(request):
    """`hil emulator serve` in its own process; yields the board address it printed."""
    flag = ["--tcp", "127.0.0.1:0"] if request.param == "tcp" else ["--pty"]
    proc = subprocess.Popen([*HIL, "emulator", "serve", *flag, "--rows", "16", "--cols", "24", "--seed", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = proc.stdout.readline().strip()
        assert address.startswith("serial:"), proc.stderr.read()
        yield address
    finally:
        stop_process(proc)


def test_info_on_a_served_emulator(served):
    out = run_hil("info", "--board", served, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["info"]["rows"] == 16 and data["info"]["cols"] == 24
    assert data["info"]["serial_number"].endswith("seed2")
    text = run_hil("info", "--board", served)
    assert "16 x 24 devices" in text.stdout


def test_info_in_process():
    out = run_hil("info", "--board", "emu?rows=8&cols=8")
    assert out.returncode == 0, out.stderr
    assert "8 x 8 devices" in out.stdout


def test_bad_address_is_a_one_line_error():
    out = run_hil("info", "--board", "serial:/dev/nonexistent-port")
    assert out.returncode == 2
    assert out.stderr.startswith("error: cannot open serial link")
    assert "Traceback" not in out.stderr


def test_bad_limits_file_is_reported(tmp_path):
    bad = tmp_path / "limits.toml"
    bad.write_text("max_set_v = -1\n")
    out = run_hil("--limits", str(bad), "info", "--board", "emu")
    assert out.returncode == 2 and "max_set_v" in out.stderr


def test_serve_needs_exactly_one_transport():
    out = run_hil("emulator", "serve")
    assert out.returncode == 2 and "exactly one" in out.stderr


def test_bench_json_has_the_figures():
    out = run_hil("bench", "--board", "emu?rows=64&cols=64", "--json", "--quick", timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in ("emulator_updates_per_s", "emulator_speedup_vs_loop", "wire_bytes_per_device_full_read",
                "round_trip_sec", "pulse_batches_per_s"):
        assert data[key] > 0
    assert set(data["wire_bytes_per_written_device"]) == {"0.001", "0.1"}
    # the wire format's budgets (deterministic: they depend on the codec, not on the machine)
    assert data["wire_bytes_per_written_device"]["0.001"] <= 4.0
    assert data["wire_bytes_per_written_device"]["0.1"] <= 2.5
    assert data["wire_bytes_per_device_full_read"] <= 2.1


def test_info_names_the_device_preset_and_refuses_an_unknown_one():
    out = run_hil("info", "--board", "emu?rows=8&cols=8&preset=noisy2x")
    assert out.returncode == 0, out.stderr
    assert "preset noisy2x" in out.stdout
    bad = run_hil("info", "--board", "emu?rows=8&cols=8&preset=nope")
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "noisy2x" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_compare_names_the_total_and_the_write_energy_ratio(tmp_path):
    energies = {"bp": (6e-6, 1.5e-5), "eapu": (3e-7, 9e-6)}  # (write, total) per method
    dirs = []
    for method, (write_j, total_j) in energies.items():
        d = tmp_path / method
        d.mkdir()
        d.joinpath("summary.json").write_text(json.dumps({
            "method": method, "task": "digits", "test_accuracy": 0.9, "write_fraction_mean": 0.01,
            "pulses_total": 10, "write_energy_j": write_j, "energy_total_j": total_j, "board_time_s": 40.0,
            "wall_s": 1.0}))
        dirs.append(str(d))
    out = run_hil("compare", *dirs, "--no-plot")
    assert out.returncode == 0, out.stderr
    assert "total training energy bp/eapu = 1.67x" in out.stdout
    assert "write energy bp/eapu = 20x" in out.stdout
