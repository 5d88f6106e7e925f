"""One BLAS thread per ``hil`` process unless the user chose otherwise (hil.blas_threads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hil.blas_threads import THREAD_ENV
from tests.waiting import HANG_GUARD_SEC

# what a process of the stack ends with: its limit's return, the BLAS threads and what a child would read
PROBE = """
import json, os
import numpy  # noqa: F401  (loads the BLAS library before the limit, as a user's script may)
from threadpoolctl import threadpool_info
from hil.blas_threads import limit_blas_threads
try:
    limit = limit_blas_threads()
except ValueError as exc:
    limit = str(exc)
blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
print(json.dumps({"limit": limit, "blas": blas, "child": os.environ.get("OPENBLAS_NUM_THREADS")}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_ENV and k != "HIL_BLAS_THREADS"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         timeout=HANG_GUARD_SEC, check=True)
    return json.loads(out.stdout)


def test_one_thread_by_default_for_the_process_and_its_children():
    seen = _probe()
    assert seen["limit"] == 1 and set(seen["blas"]) == {1} and seen["child"] == "1"


@pytest.mark.parametrize("name", THREAD_ENV)
def test_a_thread_count_the_user_set_stands(name):
    seen = _probe(**{name: "2"})
    assert seen["limit"] is None
    if name == "OPENBLAS_NUM_THREADS":
        assert seen["child"] == "2"


def test_hil_blas_threads_chooses_the_count_or_the_library_default():
    assert _probe(HIL_BLAS_THREADS="2", OMP_NUM_THREADS="4")["limit"] == 2
    assert _probe(HIL_BLAS_THREADS="default")["limit"] is None


@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_a_bad_hil_blas_threads_is_one_line_from_the_command_line(bad):
    assert "positive whole number" in _probe(HIL_BLAS_THREADS=bad)["limit"]
    run = subprocess.run([sys.executable, "-m", "hil.cli", "info", "--board", "emu"], capture_output=True, text=True,
                         env={**os.environ, "HIL_BLAS_THREADS": bad}, timeout=HANG_GUARD_SEC)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"error: HIL_BLAS_THREADS={bad!r} is not a thread count: give a positive whole number, "
        "or 'default' for the BLAS library's own choice"]
    assert run.stdout == ""
