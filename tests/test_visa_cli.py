"""The emulated VISA bench as a user runs it: serve-bench in one process, the board in another.

``hil emulator serve-bench`` (:func:`hil.cli.emulator.serve_bench`) serves the bench in its own
process.  Also: Ctrl-C (a real SIGINT) in a process driving the bench leaves the instruments idle.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from drivers import PulseBatch
from drivers.address import open_board
from firmware_stub.scpi.serve_bench import start_bench
from tests.waiting import HANG_GUARD_SEC, stop_process, wait_until

pytestmark = pytest.mark.timing  # separate processes, signals, real TCP

ROOT = Path(__file__).resolve().parents[1]


def _generous(bench_file: Path) -> Path:
    """A copy of a served bench file whose instrument timeout is the hang guard (serve-bench writes 2 s)."""
    text, n = re.subn(r"(?m)^timeout_sec = .*$", f"timeout_sec = {HANG_GUARD_SEC!r}", bench_file.read_text())
    assert n == 1, bench_file.read_text()
    copy = bench_file.with_name(bench_file.stem + "-generous.toml")
    copy.write_text(text)
    return copy


@pytest.fixture
def served_bench(tmp_path):
    """``hil emulator serve-bench`` in its own process; yields the bench file it wrote."""
    out = tmp_path / "B.toml"
    proc = subprocess.Popen([sys.executable, "-m", "hil.cli", "emulator", "serve-bench", "--out", str(out),
                             "--rows", "3", "--cols", "4", "--seed", "9"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline().strip()
        assert line == str(out), proc.stderr.read()
        yield _generous(out)
    finally:
        stop_process(proc)
        assert proc.returncode == 0


def test_open_board_on_a_served_bench(served_bench):
    with open_board(f"visa:{served_bench}") as board:
        assert (board.info.rows, board.info.cols) == (3, 4)
        g = board.read()
        assert g.shape == (3, 4) and np.all(g > 0)
        board.pulse(PulseBatch.from_dense(np.full((3, 4), 10)))
        assert np.median(board.read() - g) > 3e-6
        assert board.true_parameters()["seed"] == 9


def test_hil_info_on_a_served_bench(served_bench):
    out = subprocess.run([sys.executable, "-m", "hil.cli", "info", "--board", f"visa:{served_bench}", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=HANG_GUARD_SEC)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["info"]["kind"] == "visa" and data["info"]["rows"] == 3 and data["info"]["cols"] == 4
    assert data["info"]["capabilities"]["virtual_clock"] is True
    text = subprocess.run([sys.executable, "-m", "hil.cli", "info", "--board", f"visa:{served_bench}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=HANG_GUARD_SEC)
    assert "3 x 4 devices" in text.stdout


def test_hil_emulator_serve_bench_serves_until_stopped(tmp_path):
    out = tmp_path / "B.toml"
    proc = subprocess.Popen([sys.executable, "-m", "hil.cli", "emulator", "serve-bench", "--out", str(out),
                             "--rows", "2", "--cols", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == str(out)
        info = subprocess.run([sys.executable, "-m", "hil.cli", "info", "--board", f"visa:{_generous(out)}"],
                              capture_output=True, text=True, cwd=ROOT, timeout=HANG_GUARD_SEC)
        assert info.returncode == 0 and "2 x 2 devices" in info.stdout, info.stderr
    finally:
        stop_process(proc)
    assert proc.returncode == 0


def test_bad_bench_file_is_a_one_line_cli_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[bench]\nrows = 2\n")
    out = subprocess.run([sys.executable, "-m", "hil.cli", "info", "--board", f"visa:{bad}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=HANG_GUARD_SEC)
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: bench file {bad}") and "Traceback" not in out.stderr


def test_serve_bench_rejects_a_bad_config(tmp_path):
    cfg = tmp_path / "device.toml"
    cfg.write_text("g_min_s = -1\n")
    out = subprocess.run([sys.executable, "-m", "hil.cli", "emulator", "serve-bench", "--out", str(tmp_path / "B.toml"),
                          "--config", str(cfg)],
                         capture_output=True, text=True, cwd=ROOT, timeout=HANG_GUARD_SEC)
    assert out.returncode == 2 and out.stderr.startswith("error:")


CHILD = textwrap.dedent("""
    import signal
    import sys
    import numpy as np
    # Ctrl-C raises KeyboardInterrupt, as in a terminal, also when this test runs as a background job:
    # a process started with SIGINT ignored keeps it ignored, and Python then installs no handler
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from drivers import PulseBatch, open_board
    with open_board("visa:" + sys.argv[1]) as board:
        print("open", flush=True)
        while True:
            board.pulse(PulseBatch.from_dense(np.full((board.info.rows, board.info.cols), 3)))
            board.read()
""")


def test_sigint_in_a_driving_process_leaves_the_bench_idle(tmp_path):
    with start_bench(3, 3, seed=4) as running:
        path = running.write_bench_file(tmp_path / "B.toml", timeout_sec=HANG_GUARD_SEC)
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)

        def child_alive() -> None:
            assert proc.poll() is None, proc.stderr.read()

        try:
            assert proc.stdout.readline().strip() == "open", proc.stderr.read()
            wait_until(lambda: running.bench.counters.bursts >= 12, "the child pulsing the bench", alive=child_alive)
            # best effort, not a condition of the test: interrupt while a source is on
            wait_until(lambda: running.generator.ch[1].output or running.smu.output, "a source on",
                       poll_sec=0.0005, alive=child_alive)
            proc.send_signal(signal.SIGINT)
            proc.wait(HANG_GUARD_SEC)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr.read()
        with running.bench.lock:
            assert running.smu.output is False
            assert running.generator.ch[1].output is False
            assert running.bench.closed == set()
