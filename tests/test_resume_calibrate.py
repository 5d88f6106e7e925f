"""No dead ends: `hil calibrate` killed or refused a write at several points always resumes to the same report.

SIGINT once or twice, SIGKILL, and a write refused by the OS (RLIMIT_FSIZE: a real EFBIG from the
kernel, standing for a full disk), each at an event the command produces (the HDF5 file appearing,
stages completed); the resumed folder's calibration.json equals an uninterrupted calibration's (but
its run timings).  Ctrl-C is never swallowed at any of several instants.
"""

from __future__ import annotations

import signal

import pytest

from tests.cli_runs import (
    CAL,
    CAL_BOARD,
    finish,
    h5_event,
    hil,
    printed_command,
    report,
    wait_for,
)


@pytest.fixture(scope="module")
def calibration_reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("cal") / "reference"
    code, _, err = finish(hil("calibrate", "--board", CAL_BOARD, "--out", str(out), *CAL))
    assert code == 0, err
    return report(out)



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
    wait_for(proc, h5_event(out, stages))
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
        wait_for(proc, h5_event(out, n - 1) if n > 1 else h5_event(out))
        proc.send_signal(signal.SIGINT)
        code, _, err = finish(proc)
        assert code == 130 and "resume with: " in err and "Traceback" not in err, (n, code, err)

