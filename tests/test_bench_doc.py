"""docs/BENCH.md's first session works as written: its ``sh`` blocks run in order against the emulated bench.

The blocks run in one bash script, in a fresh folder, with ``hil`` on the PATH as this tree's command
line. One substitution: the board address ``visa:bench.toml`` becomes a copy of the served bench file
with the hang-guard instrument timeout (serve-bench writes 2 s, too short on a loaded CI machine).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.waiting import HANG_GUARD_SEC, wait_until

# a real calibration and training through three instruments: minutes of CPU, far more on a loaded machine
pytestmark = [pytest.mark.slow, pytest.mark.timing, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BENCH.md"
GENEROUS = "bench-generous.toml"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def script() -> str:
    """The doc's sh blocks as one script; the bench address made generous once the bench file exists."""
    # whatever ends the script, the bench it started in the background stops with it
    out = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT", "set -x"]
    for block in blocks("sh"):
        out.append(block.replace("visa:bench.toml", f"visa:{GENEROUS}"))
        if "serve-bench" in block:
            out.append(f"sed 's/^timeout_sec = .*/timeout_sec = {HANG_GUARD_SEC!r}/' bench.toml > {GENEROUS}")
    return "\n".join(out) + "\n"


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the script's process group (it has its own session), SIGKILL what outlives the hang guard."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:  # poll() reaps the script itself, so only live processes keep the group
        wait_until(lambda: proc.poll() is not None and not _group_alive(proc.pid), "the doc's processes to stop",
                   poll_sec=0.1)
    except AssertionError:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """Run the doc's commands once; yields the folder and the script's combined output."""
    work = tmp_path_factory.mktemp("bench-doc")
    shim = work / "bin"
    shim.mkdir()
    (shim / "hil").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m hil.cli "$@"\n')
    (shim / "hil").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.Popen(["bash", "-c", script()], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=20 * HANG_GUARD_SEC)
    finally:
        _stop_group(proc)  # the bench the script started in the background, whatever happened
    assert proc.returncode == 0, output[-6000:]
    return work, output


def test_the_doc_quotes_the_whole_first_session():
    text = script()
    for step in ("serve-bench", "hil info", "--limits limits.toml info", "calibrate", "train --board", "--method float",
                 "hil compare", "characterize iv-sweep", "kill %1"):
        assert step in text, step


def test_a_newcomer_calibrates_and_trains_digits_small_on_the_emulated_bench(session):
    work, output = session
    assert "20 x 20 devices" in output
    assert re.search(r"max_set_v\s+2\s+user", output), "hil info shows the user's tighter limit"
    cal = json.loads((work / "cal" / "calibration.json").read_text())
    assert cal["delta_g_th_s"] > 0 and cal["board"]["kind"] == "visa"
    summary = json.loads((work / "run-eapu" / "summary.json").read_text())
    assert (summary["method"], summary["task"], summary["board"]) == ("eapu", "digits-small", f"visa:{GENEROUS}")
    assert summary["epochs"] == 2 and summary["pulses_total"] > 0
    assert "summary          run-eapu/summary.json" in output
    assert (work / "figures" / "comparison_digits-small.png").is_file()
    assert (work / "char" / "iv_sweep.h5").is_file() and (work / "char" / "read_all.png").is_file()


def test_the_quoted_resume_command_is_what_hil_prints(session, monkeypatch):
    from hil.cli import cli
    from hil.interruptions import resume_command

    work, _ = session
    train = next(b for b in blocks("sh") if "--calibration" in b)
    args = shlex.split(train.replace("\\\n", " "))
    assert args[0] == "hil"
    (line,) = [b for b in blocks("text") if "resume with:" in b]
    quoted = line.strip().split("resume with: ", 1)[1]
    monkeypatch.chdir(work)  # click checks that --calibration exists
    at = next(i for i, arg in enumerate(args) if arg in cli.commands)  # the group's options come before it
    ctx = cli.make_context("hil", args[1:at + 1])
    name = args[at]
    assert quoted == resume_command(cli.commands[name].make_context(name, args[at + 1:], parent=ctx))
