"""Choose training defaults on tuning seeds that no test and no published figure uses.

    python examples/choose_defaults.py --out tuning --seeds 100-104 --lr 0.02,0.03,0.05 --w-max 2,3 --k 1

For every candidate setting (the grid of the given lists) and every tuning seed, trains
``float`` and ``eapu`` (optionally more methods) on the seed's own emulated board
(``emu?seed=S``, calibrated once per seed) and prints, per candidate, the mean over
seeds of the eapu test metric, its paired gap to float (mean and 95 % CI) and the
write fraction per weight.  Everything lands in ordinary run directories under
``--out``, so `hil compare` reads them too; the table is also written to
``--out/tuning.json``.

The seeds used for the project's defaults are written in docs/DESIGN.md ("Training
defaults"); the evaluation seeds of tests and docs/RESULTS.md are disjoint from them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hil.demo import board_for_seed, parse_seeds  # noqa: E402


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _calibrate(args: tuple[str, int, str]) -> str:
    from calibration.run import CalibrationParams, calibrate
    from drivers.address import open_board

    address, seed, out = args
    cal = Path(out)
    if not (cal / "calibration.json").is_file():
        with open_board(address) as board:
            calibrate(board, cal, CalibrationParams(seed=seed, plots=False), resume=cal.is_dir(), progress=False)
    return str(cal / "calibration.json")


def _train(args: tuple[dict, str]) -> dict:
    from hil.train import TrainConfig, train

    cfg, out = args
    run = Path(out)
    if (run / "summary.json").is_file():
        return json.loads((run / "summary.json").read_text())
    return train(TrainConfig(**cfg), run, resume=(run / "config.json").is_file(), progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", default="100-104", help="tuning seeds (default 100-104)")
    ap.add_argument("--board", default="emu", help="emulator address; each seed gets emu?seed=S")
    ap.add_argument("--task", default="digits")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--methods", default="float,eapu")
    ap.add_argument("--optimizer", default="sgd")
    ap.add_argument("--lr", default="0.03")
    ap.add_argument("--w-max", default="3")
    ap.add_argument("--k", default="1")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    from hil.compare import compare

    seeds = parse_seeds(args.seeds)
    methods = args.methods.split(",")
    grid = list(itertools.product(args.optimizer.split(","), _floats(args.lr), _floats(args.w_max), _floats(args.k)))
    with ProcessPoolExecutor(args.jobs) as pool:
        cals = dict(zip(seeds, pool.map(_calibrate, [(board_for_seed(args.board, s), s,
                                                      str(args.out / f"cal-seed-{s}")) for s in seeds])))
        jobs = []
        for opt, lr, w_max, k in grid:
            name = f"{opt}-lr{lr:g}-w{w_max:g}-k{k:g}"
            for s in seeds:
                for m in methods:
                    if m == "float" and (k, w_max) != (grid[0][3], grid[0][2]):
                        continue  # float depends on neither k nor w_max
                    cfg = dict(task=args.task, method=m, board=board_for_seed(args.board, s), epochs=args.epochs,
                               seed=s, optimizer=opt, lr=lr, w_max=w_max, delta_g_th_k=k,
                               calibration=cals[s] if m != "float" else None)
                    fname = f"{opt}-lr{lr:g}-float" if m == "float" else name
                    jobs.append((cfg, str(args.out / fname / f"seed-{s}" / m)))
        list(pool.map(_train, jobs))
    rows = []
    for opt, lr, w_max, k in grid:
        name = f"{opt}-lr{lr:g}-w{w_max:g}-k{k:g}"
        fname = f"{opt}-lr{lr:g}-float"
        dirs = [args.out / name / f"seed-{s}" / m for s in seeds for m in methods if m != "float"]
        dirs += [args.out / fname / f"seed-{s}" / "float" for s in seeds]
        groups, _ = compare(dirs)
        for g in groups:
            if g.method == "float":
                continue
            f = g.figures
            rows.append({"candidate": name, "method": g.method, "metric_mean": f["metric"].mean,
                         "gap_mean": g.gap_to_float.mean, "gap_ci95": g.gap_to_float.ci95,
                         "write_fraction_per_weight": (f.get("write_fraction_per_weight") or f["write_fraction_per_device"]).mean})
    (args.out / "tuning.json").write_text(json.dumps({"seeds": seeds, "rows": rows}, indent=2))
    print(f"tuning seeds {seeds}, task {args.task}, {args.epochs} epochs")
    print(f"{'candidate':28s} {'method':10s} {'metric':>8s} {'gap to float':>16s} {'writes/weight':>14s}")
    for r in rows:
        print(f"{r['candidate']:28s} {r['method']:10s} {r['metric_mean']:8.4f} "
              f"{r['gap_mean']:+8.4f} ± {r['gap_ci95']:.4f} {r['write_fraction_per_weight']:14.3%}")


if __name__ == "__main__":
    main()
