"""A run is tied to its board's identity, not its address.

Resuming over another port of the same emulator works; over another emulator (other seed) it is
refused naming both boards; a calibration from another board is refused unless allowed (and then
recorded); emulators of other presets are other boards.
"""

from __future__ import annotations

import json
import os

import pytest

from firmware_stub.firmware import make_emulator
from firmware_stub.serve import TcpServer, serve_in_thread
from tests.cli_runs import (
    BOARD,
    CAL,
    COLS,
    ROWS,
    SEED,
    TRAIN,
    finish,
    hil,
    printed_command,
    steps_logged,
    summary,
    wait_for,
)
from tests.run_checks import assert_same_run


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