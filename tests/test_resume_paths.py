"""No dead ends: `hil train`, `hil calibrate` and `hil demo` killed at several points always resume.

Each command runs as a user runs it (a separate process) and is stopped by an
event it produces (a file appearing, steps in the metrics), not after a sleep:
SIGINT once or twice (the printed command must resume it), SIGKILL (the
documented `--resume` command must), a lost link, a write refused by the OS
(RLIMIT_FSIZE: a real EFBIG from the kernel, standing for a full disk).  The
resumed folder must end exactly where an uninterrupted run ends on the same
seeded emulator (summary.json but wall_s; calibration.json but its run timings).
A run is tied to its board's identity, not its address.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from calibration.report import CalibrationReport
from firmware_stub.firmware import make_emulator
from firmware_stub.serve import TcpServer, serve_in_thread
from tests.run_checks import assert_same_run

HIL = [sys.executable, "-m", "hil.cli"]
ROWS, COLS, SEED = 16, 56, 5
BOARD = f"emu?rows={ROWS}&cols={COLS}&seed={SEED}"
TRAIN = ["--task", "digits-small", "--hidden", "16", "--method", "eapu", "--epochs", "1", "--seed", str(SEED),
         "--quiet"]
CAL = ["--seed", "7", "--sample", "128", "--no-plots", "--no-progress"]
HANG_GUARD_S = 600


def hil(*args: str, fsize: int | None = None) -> subprocess.Popen:
    limit = None if fsize is None else (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize)))
    return subprocess.Popen([*HIL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=HANG_GUARD_S)
    return proc.returncode, out, err


def wait_for(proc: subprocess.Popen, ready) -> None:
    """Poll until ``ready()`` (an event the command produces); the command must still be running."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not ready():
        assert proc.poll() is None, f"ended before the event: {proc.communicate()}"
        assert time.monotonic() < deadline, "hang guard"
        time.sleep(0.002)


def steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return path.read_text().count('"kind": "step"') if path.exists() else 0


def printed_command(stderr: str) -> list[str]:
    """The command an interruption message says resumes the run (``hil ...``), as argv."""
    assert "Traceback" not in stderr and "Aborted!" not in stderr, stderr
    line = next(x for x in stderr.splitlines() if "resume with: " in x)
    argv = shlex.split(line.rsplit("resume with: ", 1)[1])
    assert argv[0] == "hil" and "--resume" in argv, argv
    return argv[1:]


def summary(out: Path) -> dict:
    s = json.loads((out / "summary.json").read_text())
    s.pop("wall_s")
    return s


def report(out: Path) -> dict:
    return CalibrationReport.load(out / "calibration.json").deterministic()


# ---- hil train ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("train") / "reference"
    code, _, err = finish(hil("train", "--board", BOARD, "--out", str(out), *TRAIN))
    assert code == 0, err
    return summary(out)


def _calibration_started(out: Path):
    cal = out / "calibration"
    return lambda: (cal / "calibration.h5").exists() or (cal / "calibration.h5.tmp").exists()


TRAIN_KILLS = {
    # name: (event, signals)
    "sigkill-after-config": (lambda out: (lambda: (out / "config.json").exists()), [signal.SIGKILL]),
    "sigkill-creating-calibration-h5": (_calibration_started, [signal.SIGKILL]),
    "sigint-creating-calibration-h5": (_calibration_started, [signal.SIGINT]),
    "sigint-mid-training": (lambda out: (lambda: steps_logged(out) >= 30), [signal.SIGINT]),
    "double-sigint-mid-training": (lambda out: (lambda: steps_logged(out) >= 30), [signal.SIGINT, signal.SIGINT]),
    "sigkill-mid-training": (lambda out: (lambda: steps_logged(out) >= 30), [signal.SIGKILL]),
}


@pytest.mark.parametrize("kill", list(TRAIN_KILLS))
def test_hil_train_interrupted_anywhere_resumes_to_the_same_result(tmp_path, train_reference, kill):
    event, signals = TRAIN_KILLS[kill]
    out = tmp_path / "run"
    proc = hil("train", "--board", BOARD, "--out", str(out), *TRAIN)
    wait_for(proc, event(out))
    for sig in signals:
        proc.send_signal(sig)
    code, _, err = finish(proc)
    assert not (out / "summary.json").exists()
    if signals[0] == signal.SIGKILL:
        assert code == -signal.SIGKILL
        again = ["train", "--resume", "--out", str(out)]  # the documented command
        rerun = finish(hil("train", "--board", BOARD, "--out", str(out), *TRAIN))
        assert rerun[0] == 2 and "--resume" in rerun[2] and "Traceback" not in rerun[2]  # no silent overwrite
    else:
        assert code == 130, err
        again = printed_command(err)
    if kill in ("sigkill-after-config", "sigkill-creating-calibration-h5", "sigint-creating-calibration-h5"):
        assert not (out / "checkpoint.json").exists()  # the case that was a dead end
    code, _, err = finish(hil(*again))
    assert code == 0, err
    assert_same_run(summary(out), train_reference)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "step"]
    assert steps == list(range(len(steps))) and len(steps) == train_reference["steps"]


# ---- hil calibrate ------------------------------------------------------------------------------------
CAL_BOARD = "emu?rows=24&cols=24&seed=7"


@pytest.fixture(scope="module")
def calibration_reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("cal") / "reference"
    code, _, err = finish(hil("calibrate", "--board", CAL_BOARD, "--out", str(out), *CAL))
    assert code == 0, err
    return report(out)


def _h5(out: Path, n_stages: int = 0):
    def ready() -> bool:
        path = out / "calibration.h5"
        if n_stages == 0:
            return path.exists() or (out / "calibration.h5.tmp").exists()
        if not path.exists():
            return False
        from calibration.storage import RawStore

        return len(RawStore(path).completed()) >= n_stages

    return ready


@pytest.mark.parametrize("kill, stages, signals", [
    ("sigint-creating-h5", 0, [signal.SIGINT]),
    ("double-sigint-creating-h5", 0, [signal.SIGINT, signal.SIGINT]),
    ("sigkill-creating-h5", 0, [signal.SIGKILL]),
    ("sigint-after-two-stages", 2, [signal.SIGINT]),
    ("sigkill-after-two-stages", 2, [signal.SIGKILL]),
])
def test_hil_calibrate_interrupted_anywhere_resumes_to_the_same_report(tmp_path, calibration_reference, kill,
                                                                       stages, signals):
    out = tmp_path / "cal"
    argv = ["calibrate", "--board", CAL_BOARD, "--out", str(out), *CAL]
    proc = hil(*argv)
    wait_for(proc, _h5(out, stages))
    for sig in signals:
        proc.send_signal(sig)
    code, _, err = finish(proc)
    if signals[0] == signal.SIGKILL:
        again = [*argv, "--resume"]  # the documented command
    else:
        assert code == 130, err
        again = printed_command(err)
    assert not (out / "calibration.json").exists()
    code, _, err = finish(hil(*again))
    assert code == 0, err
    assert report(out) == calibration_reference


def test_a_write_refused_by_the_os_keeps_the_previous_complete_file_and_resumes(tmp_path, calibration_reference):
    """RLIMIT_FSIZE makes the kernel refuse the HDF5 write that would grow past the limit (EFBIG), a full
    disk in effect: the write in progress fails, the previous complete file stays, the message says how
    to resume and resuming (without the limit) ends like an uninterrupted run."""
    from calibration.storage import RawStore

    out = tmp_path / "cal"
    argv = ["calibrate", "--board", CAL_BOARD, "--out", str(out), *CAL]
    code, _, err = finish(hil(*argv, fsize=200_000))
    assert code == 2 and "Traceback" not in err, err
    assert not (out / "calibration.h5.tmp").exists()
    done = RawStore(out / "calibration.h5").completed()  # readable, complete stages only
    assert 0 < len(done) < 5, done
    code, _, err = finish(hil(*printed_command(err)))
    assert code == 0, err
    assert report(out) == calibration_reference


def test_ctrl_c_is_never_swallowed(tmp_path):
    """Ctrl-C at many instants of a calibration (each an event: the n-th HDF5 write) always ends with 130."""
    for n in range(1, 5):
        out = tmp_path / f"cal{n}"
        proc = hil("calibrate", "--board", CAL_BOARD, "--out", str(out), *CAL)
        wait_for(proc, _h5(out, n - 1) if n > 1 else _h5(out))
        proc.send_signal(signal.SIGINT)
        code, _, err = finish(proc)
        assert code == 130 and "resume with: " in err and "Traceback" not in err, (n, code, err)


# ---- hil demo -----------------------------------------------------------------------------------------
DEMO_BOARD = "emu?rows=32&cols=84&seed=5"
DEMO = ["--board", DEMO_BOARD, "--task", "digits-small", "--epochs", "1", "--seeds", "1", "--quiet"]


@pytest.mark.slow
def test_hil_demo_interrupted_resumes_every_part(tmp_path):
    ref = tmp_path / "reference"
    code, _, err = finish(hil("demo", "--out", str(ref), *DEMO))
    assert code == 0, err

    out = tmp_path / "demo"
    proc = hil("demo", "--out", str(out), *DEMO)  # SIGKILL while calibrating
    wait_for(proc, (out / "seed-0" / "calibration" / "calibration.h5").exists)  # a complete file: the demo has begun
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    code, _, err = finish(hil("demo", "--out", str(out), *DEMO))
    assert code == 2 and "--resume" in err and "Traceback" not in err  # not started again over it

    proc = hil("demo", "--out", str(out), *DEMO, "--resume")  # then Ctrl-C in the bp run
    wait_for(proc, lambda: steps_logged(out / "seed-0" / "bp") >= 10)
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130, err
    again = printed_command(err)
    assert again[0] == "demo" and "--resume" in again

    code, _, err = finish(hil(*again))
    assert code == 0, err
    assert report(out / "seed-0" / "calibration") == report(ref / "seed-0" / "calibration")
    for method in ("float", "bp", "eapu"):
        assert_same_run(summary(out / "seed-0" / method), summary(ref / "seed-0" / method))


# ---- board identity, not address ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def board_calibration(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("boardcal")
    code, _, err = finish(hil("calibrate", "--board", BOARD, "--out", str(out), *CAL))
    assert code == 0, err
    return str(out / "calibration.json")


def _served(endpoint) -> tuple[TcpServer, object]:
    server = TcpServer(endpoint, "127.0.0.1", 0)
    return server, serve_in_thread(server)


def test_resume_over_another_port_of_the_same_board_and_not_over_another_board(tmp_path, board_calibration):
    from hil.train import TrainConfig, train

    cfg = dict(task="digits-small", hidden=[16], method="eapu", epochs=1, seed=SEED, calibration=board_calibration)
    reference = train(TrainConfig(board=BOARD, **cfg), tmp_path / "reference", progress=False)
    reference.pop("wall_s")

    endpoint = make_emulator(ROWS, COLS, seed=SEED)
    server, thread = _served(endpoint)
    out = tmp_path / "run"
    proc = hil("train", "--board", f"serial:{server.url}?timeout=0.5&retries=2", "--out", str(out), *TRAIN,
               "--calibration", board_calibration)
    wait_for(proc, lambda: steps_logged(out) >= 30)
    server.stop.set()  # the link is lost mid-run
    thread.join(30)
    code, _, err = finish(proc)
    assert code == 2 and not (out / "summary.json").exists(), err
    assert printed_command(err)[:1] == ["train"]

    other, other_thread = _served(make_emulator(ROWS, COLS, seed=SEED + 1))
    try:
        code, _, err = finish(hil("train", "--resume", "--out", str(out), "--board", f"serial:{other.url}"))
        assert code == 2 and "Traceback" not in err
        assert f"EMU-{ROWS}x{COLS}-seed{SEED}" in err and f"EMU-{ROWS}x{COLS}-seed{SEED + 1}" in err, err
    finally:
        other.stop.set()
        other_thread.join(30)

    again, again_thread = _served(endpoint)  # the same emulator, on a new port
    try:
        code, _, err = finish(hil("train", "--resume", "--out", str(out), "--board", f"serial:{again.url}"))
        assert code == 0, err
    finally:
        again.stop.set()
        again_thread.join(30)
    resumed = summary(out)
    assert_same_run(resumed, reference, ignore={"wall_s", "board"})
    addresses = json.loads((out / "board.json").read_text())["addresses"]
    assert len(addresses) == 2 and addresses[1] == f"serial:{again.url}"


def test_a_calibration_from_another_board_is_refused_unless_allowed(tmp_path, board_calibration):
    other = f"emu?rows={ROWS}&cols={COLS}&seed={SEED + 1}"
    code, _, err = finish(hil("train", "--board", other, "--out", str(tmp_path / "refused"), *TRAIN,
                              "--calibration", board_calibration))
    assert code == 2 and err.startswith("error: the calibration") and "Traceback" not in err, err
    assert f"seed{SEED}" in err and f"seed{SEED + 1}" in err and "--allow-foreign-calibration" in err
    assert not (tmp_path / "refused" / "config.json").exists()  # refused before the folder became a run

    out = tmp_path / "allowed"
    code, _, err = finish(hil("train", "--board", other, "--out", str(out), *TRAIN, "--calibration",
                              board_calibration, "--allow-foreign-calibration"))
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["allow_foreign_calibration"] is True
    foreign = json.loads((out / "summary.json").read_text())["foreign_calibration"]
    assert foreign["measured_on"]["serial_number"] == f"EMU-{ROWS}x{COLS}-seed{SEED}"
    assert foreign["used_on"]["serial_number"] == f"EMU-{ROWS}x{COLS}-seed{SEED + 1}"


def test_emulators_of_other_presets_are_other_boards(tmp_path):
    from drivers.address import open_board

    cfg = tmp_path / "device.toml"
    cfg.write_text("sigma_w_s = 1.5e-6\n")
    with open_board("emu?rows=8&cols=8&seed=1") as a, open_board(f"emu?rows=8&cols=8&seed=1&config={cfg}") as b, \
            open_board("emu?rows=8&cols=8&seed=1") as c:
        assert a.info.serial_number == c.info.serial_number == "EMU-8x8-seed1"
        assert b.info.serial_number.startswith("EMU-8x8-seed1-p") and b.info.serial_number != a.info.serial_number
    assert os.path.exists(cfg)
