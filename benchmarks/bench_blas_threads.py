"""What BLAS threads cost this stack: one training run alone and two side by side (printed, not asserted).

    python benchmarks/bench_blas_threads.py [--runs 2] [--task digits] [--epochs 1] [--workload train|matmul]

The ``train`` workload (the default) is ``hil train``'s code path in a fresh process (``train()``
called from Python, so without the command line's thread limit): ``eapu`` on ``--task`` on the
default emulated board (calibrated at the start, as ``hil train`` without ``--calibration`` does).  It runs
with the BLAS library's default thread count and with one thread (``OMP_NUM_THREADS=1``, what
:func:`hil.blas_threads.limit_blas_threads` sets), first alone, then ``--runs`` at once (a run beside
an emulator server, a sweep's workers, the test suite's workers).  Printed: the wall time of each
case and the ratios ``default threads / one thread`` alone and side by side.  The ``matmul``
workload is the array's own size in a loop (20,000 products of two 128 x 128 matrices), the size at
which OpenBLAS starts threads.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hil.blas_threads import THREAD_ENV  # noqa: E402
MATMUL = """
import numpy as np
a = np.random.default_rng(0).random((128, 128))
for _ in range(20000):
    a = np.tanh(a @ a.T * 0.01)
"""
RUN = """
import sys
from pathlib import Path
from hil.train import TrainConfig, train
train(TrainConfig(task=sys.argv[2], method="eapu", epochs=int(sys.argv[3]), seed=0), Path(sys.argv[1]),
      progress=False)
"""


def _timed(n: int, one_thread: bool, task: str, epochs: int, workload: str) -> float:
    """Wall time of ``n`` processes of ``workload`` started together."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV and k != "HIL_BLAS_THREADS"}
    env["PYTHONPATH"] = str(ROOT)
    if one_thread:  # what the hil command line sets for itself and its children
        env.update({name: "1" for name in THREAD_ENV})
    code = RUN if workload == "train" else MATMUL
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", code, str(Path(tmp) / f"run{i}"), task, str(epochs)], env=env)
                 for i in range(n)]
        if any(p.wait() for p in procs):
            raise SystemExit(f"a {workload} process failed")
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=os.cpu_count() or 2, help="runs side by side (default: the cores)")
    ap.add_argument("--task", default="digits")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--workload", choices=("train", "matmul"), default="train")
    args = ap.parse_args()
    wall = {}
    for n in (1, args.runs):
        for one in (False, True):
            wall[n, one] = _timed(n, one, args.task, args.epochs, args.workload)
            print(f"{n} run{'s' if n > 1 else ' '} at once, {'one BLAS thread ' if one else 'default threads'}: "
                  f"{wall[n, one]:.1f} s")
    print(f"wall time ratio (default threads / one thread), 1 run alone: {wall[1, False] / wall[1, True]:.2f}x")
    print(f"wall time ratio (default threads / one thread), {args.runs} runs at once: "
          f"{wall[args.runs, False] / wall[args.runs, True]:.2f}x")


if __name__ == "__main__":
    main()
