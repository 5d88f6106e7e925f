"""Running ``hil`` commands as a user does (separate processes) and stopping them on events they produce.

Shared by the resume tests (tests/test_resume_*.py): a command is started with :func:`hil`, an event it
produces (a file appearing, steps logged) is awaited with :func:`wait_for` (polling, with a hang guard
that is not a speed bound), and the command an interruption message prints is read back with
:func:`printed_command`.
"""

from __future__ import annotations

import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

from calibration.report import CalibrationReport

HIL = [sys.executable, "-m", "hil.cli"]
ROWS, COLS, SEED = 16, 56, 5
BOARD = f"emu?rows={ROWS}&cols={COLS}&seed={SEED}"
TRAIN = ["--task", "digits-small", "--hidden", "16", "--method", "eapu", "--epochs", "1", "--seed", str(SEED),
         "--quiet"]
CAL_BOARD = "emu?rows=24&cols=24&seed=7"
CAL = ["--seed", "7", "--sample", "128", "--no-plots", "--no-progress"]
HANG_GUARD_SEC = 600


def hil(*args: str, fsize: int | None = None) -> subprocess.Popen:
    limit = None if fsize is None else (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize)))
    return subprocess.Popen([*HIL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=HANG_GUARD_SEC)
    return proc.returncode, out, err


def wait_for(proc: subprocess.Popen, ready) -> None:
    """Poll until ``ready()`` (an event the command produces); the command must still be running."""
    deadline = time.monotonic() + HANG_GUARD_SEC
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




def h5_event(out: Path, n_stages: int = 0):
    """An event: ``calibration.h5`` being created (``n_stages`` 0) or holding ``n_stages`` completed stages."""
    def ready() -> bool:
        path = out / "calibration.h5"
        if n_stages == 0:
            return path.exists() or (out / "calibration.h5.tmp").exists()
        if not path.exists():
            return False
        from calibration.storage import RawStore

        return len(RawStore(path).completed()) >= n_stages

    return ready
