"""No dead ends: `hil train` killed at several points always resumes to the same result.

The command runs as a user runs it (a separate process) and is stopped by an event it
produces (a file appearing, steps in the metrics), not after a sleep: SIGINT once or
twice (the printed command must resume it) or SIGKILL (the documented `--resume` command
must).  The resumed folder must end exactly where an uninterrupted run ends on the same
seeded emulator (summary.json but wall_s).  The other interruptions are in
test_resume_calibrate.py, test_resume_demo.py and test_resume_identity.py.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.cli_runs import (
    BOARD,
    TRAIN,
    finish,
    hil,
    printed_command,
    steps_logged,
    summary,
    wait_for,
)
from tests.run_checks import assert_same_run


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

