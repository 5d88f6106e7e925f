"""Throughput of a sweep on N cores against the same points run one after another (printed, not asserted).

    python benchmarks/bench_sweep.py [--cores 2] [--seeds 4] [--epochs 2]

The sweep is ``float`` and ``eapu`` on ``digits-small`` over ``--seeds`` seeds, each on its own
emulated board (``emu?rows=32&cols=96&seed=S``), calibrated per board.  It runs once with
``hil sweep``'s engine on an embedded local Ray of ``--cores`` CPUs, once with one CPU (the same
points one after another, through the same engine); the Ray start-up is timed separately and
not counted.  Printed: points per minute of both and their ratio, named
``sweep throughput ratio (N cores / 1 core)``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _spec(folder: Path, seeds: int, epochs: int) -> Path:
    spec = folder / "bench.toml"
    spec.write_text(f'[base]\nboard = "emu?rows=32&cols=96"\ntask = "digits-small"\nepochs = {epochs}\n\n'
                    f'[grid]\nseed = "{seeds}"\nmethod = ["float", "eapu"]\n')
    return spec


def _timed_sweep(spec: Path, out: Path, cores: int) -> tuple[float, float, int]:
    import ray

    from hil.sweep_engine import init_ray, run_sweep

    t0 = time.perf_counter()
    init_ray(None, cores, {})
    t1 = time.perf_counter()
    try:
        result = run_sweep(spec, out, progress=False)
    finally:
        ray.shutdown()
    t2 = time.perf_counter()
    if result.failed:
        raise SystemExit(f"points failed: {result.failed}")
    return t1 - t0, t2 - t1, len(result.done)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = _spec(tmp, args.seeds, args.epochs)
        rows = {}
        for cores in (args.cores, 1):
            start, run, n = _timed_sweep(spec, tmp / f"cores-{cores}", cores)
            rows[cores] = (n / run * 60.0, run, start)
            print(f"{cores} core{'s' if cores > 1 else ' '}: {n} points in {run:.1f} s "
                  f"({rows[cores][0]:.2f} points/min; Ray start-up {start:.1f} s, not counted)")
        print(f"sweep throughput ratio ({args.cores} cores / 1 core): {rows[args.cores][0] / rows[1][0]:.2f}x")


if __name__ == "__main__":
    main()
