"""Throughput of a sweep on N cores against the same points run one after another (printed, not asserted).

    python benchmarks/bench_sweep.py [--cores 2] [--seeds 4] [--epochs 2]

The sweep is ``float`` and ``eapu`` on ``digits-small`` over ``--seeds`` seeds, each on its own
emulated board (``emu?rows=32&cols=96&seed=S``), calibrated per board.  The same points (and
calibrations) run three times, each into a fresh folder:

* ``hil sweep``'s engine on an embedded local Ray of ``--cores`` CPUs;
* the same engine on a Ray of one CPU (one after another; Ray's own processes then have the
  other cores to themselves, which flatters this baseline);
* a plain loop in this process, no Ray at all (``ensure_calibration`` then ``ensure_run``, the
  functions the sweep's tasks call): what a user gets running the points one after another.

Ray's start-up is timed separately and not counted.  Printed: points per minute of each and the
two ratios ``sweep throughput ratio (N cores / plain loop)`` (the figure issue 13 asks for) and
``(N cores / Ray on 1 core)``.
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
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = _spec(tmp, args.seeds, args.epochs)
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
