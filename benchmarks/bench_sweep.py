"""Throughput of a sweep on N cores against the same points run one after another (printed, not asserted).

    python benchmarks/bench_sweep.py [--cores 2] [--seeds 8] [--epochs 10] [--task digits] [--board emu]

The sweep is ``float`` and ``eapu`` on ``--task`` over ``--seeds`` seeds, each on its own emulated
board (``--board`` with ``seed=S``; by default the default 128 x 128 board, as the sweeps of
``examples/sweeps/``), calibrated per board without plots.  The same points (and calibrations) run
three times, each into a fresh folder:

* ``hil sweep``'s engine on an embedded local Ray of ``--cores`` CPUs;
* the same engine on a Ray of one CPU (one after another; Ray's own processes then have the
  other cores to themselves, which flatters this baseline);
* a plain loop in this process, no Ray at all (``ensure_calibration`` then ``ensure_run``, the
  functions the sweep's tasks call): what a user gets running the points one after another.

Ray's start-up is timed separately and not counted; this process imports what the spec's
expansion and the points need before any timing (the sweep's workers pay their own imports).
Printed: points per minute of each and two ratios, ``sweep throughput ratio (N cores / plain
loop)`` (issue 13's figure) and ``(N cores / Ray on 1 core)``.  Two processes side by side are
slower each than one alone on a small machine (shared caches and memory):
``benchmarks/bench_blas_threads.py`` prints that ceiling for single training runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _spec(folder: Path, board: str, task: str, seeds: int, epochs: int) -> Path:
    spec = folder / "bench.toml"
    spec.write_text(f'[base]\nboard = "{board}"\ntask = "{task}"\nepochs = {epochs}\n\n'
                    f'[calibration]\nplots = false\n\n'
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


def _warm_up(spec: Path, out: Path) -> None:
    """Import what expanding the spec and running a point need, in this process, before any timing:
    otherwise the first mode timed pays them (the sweep's workers still pay their own)."""
    from hil.demo import ensure_calibration, ensure_run  # noqa: F401
    from hil.sweep_spec import expand, load_spec

    expand(load_spec(spec)[0], out, where=str(spec))


def _timed_loop(spec: Path, out: Path) -> tuple[float, int]:
    """The same calibrations and points one after another in this process, without Ray."""
    from hil.demo import ensure_calibration, ensure_run
    from hil.sweep_spec import expand, load_spec
    from hil.train import TrainConfig

    from calibration.run import CalibrationParams

    sweep_spec, _ = load_spec(spec)
    points, cals, devices = expand(sweep_spec, out, where=str(spec))
    assert not devices, "the benchmark's boards need no device files"
    t0 = time.perf_counter()
    for cal in cals:
        ensure_calibration(cal.board, out / "calibrations" / cal.name, CalibrationParams(**cal.params),
                           progress=False)
    for point in points:
        ensure_run(TrainConfig(**point.config), out / "runs" / point.name, progress=False)
    return time.perf_counter() - t0, len(points)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--task", default="digits")
    ap.add_argument("--board", default="emu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = _spec(tmp, args.board, args.task, args.seeds, args.epochs)
        _warm_up(spec, tmp / "warm-up")
        rate = {}
        for cores in (args.cores, 1):
            start, run, n = _timed_sweep(spec, tmp / f"cores-{cores}", cores)
            rate[cores] = n / run * 60.0
            print(f"Ray, {cores} CPU{'s' if cores > 1 else ' '}: {n} points in {run:.1f} s "
                  f"({rate[cores]:.2f} points/min; Ray start-up {start:.1f} s, not counted)")
        run, n = _timed_loop(spec, tmp / "loop")
        rate["loop"] = n / run * 60.0
        print(f"plain loop:  {n} points in {run:.1f} s ({rate['loop']:.2f} points/min)")
        print(f"sweep throughput ratio ({args.cores} cores / plain loop): {rate[args.cores] / rate['loop']:.2f}x")
        print(f"sweep throughput ratio ({args.cores} cores / Ray on 1 core): {rate[args.cores] / rate[1]:.2f}x")


if __name__ == "__main__":
    main()
