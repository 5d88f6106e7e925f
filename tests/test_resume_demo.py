"""No dead ends: `hil demo` (the README's main job) killed while calibrating and interrupted mid-run resumes.

Every part (calibration, each method's run) ends exactly as in an uninterrupted demo.
"""

from __future__ import annotations

import signal

import pytest

from tests.cli_runs import (
    finish,
    hil,
    printed_command,
    report,
    steps_logged,
    summary,
    wait_for,
)
from tests.run_checks import assert_same_run

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

