"""The main job (``hil demo``): calibrate, train ``float``, ``bp`` and ``eapu`` over several seeds, compare.

Each seed gets its own board where the address names an emulator (``emu?seed=S``: a
fresh draw of devices, so the spread over seeds covers device variation as well as
training noise) and the same board otherwise.  Layout of the output folder::

    OUT/seed-S/calibration/   calibration of that seed's board
    OUT/seed-S/METHOD/        one training run directory per method
    OUT/comparison_TASK.png   figures of ``hil compare``

Every part that has finished is kept and skipped when the demo is run again with
``resume``; an interrupted part is resumed from its own checkpoint.  A part made by other code than
this (:mod:`hil.stale_runs`) is set aside in ``OUT/superseded/`` and made again, unless ``keep_stale``
(then kept, and an interrupted one continues under this code, recorded in its run).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl, urlencode

log = logging.getLogger(__name__)

DEMO_METHODS = ("float", "bp", "eapu")


def board_for_seed(address: str, seed: int) -> str:
    """``emu...`` addresses get ``seed=S`` (each seed its own emulated board); other boards are used as given."""
    if address != "emu" and not address.startswith("emu?"):
        return address
    _, _, query = address.partition("?")
    params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "seed"]
    return "emu?" + urlencode([("seed", str(seed)), *params])


def parse_seeds(text: str) -> list[int]:
    """``"5"`` -> five seeds 0..4; ``"0-9"``, ``"3,7,11"`` or ``"0-4,10"`` -> those seeds."""
    text = text.strip()
    try:
        if text.isdigit():
            n = int(text)
            if n < 1:
                raise ValueError
            return list(range(n))
        seeds: list[int] = []
        for part in text.split(","):
            a, sep, b = part.strip().partition("-")
            seeds += list(range(int(a), int(b) + 1)) if sep else [int(a)]
    except ValueError:
        raise ValueError(f"--seeds expects a count (5) or a list of seeds (0-9, 3,7,11); got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r} names no seed, or one seed twice")
    return seeds


@dataclass(frozen=True)
class DemoPlan:
    address: str
    out_dir: Path
    seeds: tuple[int, ...]
    epochs: int = 10
    task: str = "digits"
    methods: tuple[str, ...] = DEMO_METHODS

    def calibration_dir(self, seed: int) -> Path:
        return self.out_dir / f"seed-{seed}" / "calibration"

    def run_dir(self, seed: int, method: str) -> Path:
        return self.out_dir / f"seed-{seed}" / method

    def run_dirs(self) -> list[Path]:
        return [self.run_dir(s, m) for s in self.seeds for m in self.methods]


def ensure_calibration(address: str, cal_dir: Path, params=None, *, limits=None, progress: bool = True):
    """Calibrate the board at ``address`` into ``cal_dir`` unless that calibration has finished already
    (an interrupted one is resumed); returns the new report, or None when it was there."""
    from calibration.run import CalibrationParams, calibrate
    from drivers.address import open_board

    if (cal_dir / "calibration.json").is_file():
        return None
    with open_board(address, limits) as board:
        return calibrate(board, cal_dir, params or CalibrationParams(), resume=cal_dir.is_dir(), progress=progress)


def ensure_run(cfg, run_dir: Path, *, limits=None, progress: bool = True,
               allow_code_change: bool = False) -> tuple[dict, bool]:
    """The summary of the training run ``cfg`` in ``run_dir`` (``hil train``'s code path): a finished run is
    read back, an interrupted one resumed from its checkpoint (``allow_code_change``: also one checkpointed
    by other code), a new one started.  Also says whether it ran."""
    import json

    from hil.train import train

    if (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text()), False
    resume = (run_dir / "config.json").is_file()
    return train(cfg, run_dir, resume=resume, progress=progress, limits=limits,
                 allow_code_change=allow_code_change), True


def settle_stale(plan: DemoPlan, keep: bool) -> str | None:
    """Set aside (unless ``keep``) the parts of ``plan`` made by other code; the line that says so, or None."""
    from hil.stale_runs import set_aside, stale_calibration, stale_point, summary_line

    stales, finished = [], 0
    for seed in plan.seeds:
        cal = stale_calibration(plan.calibration_dir(seed))
        finished += (plan.calibration_dir(seed) / "calibration.json").is_file()
        for method in plan.methods:
            run_dir = plan.run_dir(seed, method)
            finished += (run_dir / "summary.json").is_file()
            remade = cal is not None and not keep and method != "float"  # trained on a calibration made again
            stale = stale_point(run_dir, cal.recorded if remade else None)
            if stale is not None:
                stales.append(stale)
        if cal is not None:
            stales.append(cal)
    if not stales:
        return None
    if not keep:
        for stale in stales:
            set_aside(stale, plan.out_dir)
    return summary_line(stales, finished, keep, plan.out_dir)


def run_demo(plan: DemoPlan, *, limits=None, progress: bool = True,
             echo: Callable[[str], None] = print, keep_stale: bool = False) -> list[Path]:
    """Calibrate and train every seed of ``plan`` that has not finished yet (or was made by other code, unless
    ``keep_stale``: :func:`settle_stale`); returns the run directories."""
    from calibration.run import CalibrationParams
    from hil.train import TrainConfig

    line = settle_stale(plan, keep_stale)
    if line is not None:
        echo(line)
    for seed in plan.seeds:
        address = board_for_seed(plan.address, seed)
        cal_dir = plan.calibration_dir(seed)
        cal_file = cal_dir / "calibration.json"
        if any(m != "float" for m in plan.methods):
            report = ensure_calibration(address, cal_dir, CalibrationParams(seed=seed), limits=limits,
                                        progress=progress)
            if report is not None:
                echo(f"seed {seed}: {address} calibrated, delta_g_th = {report.delta_g_th_s * 1e6:.3f} µS, "
                     f"write noise = {report.write_noise_sigma_s * 1e6:.3f} µS")
        for method in plan.methods:
            cfg = TrainConfig(task=plan.task, method=method, board=address, epochs=plan.epochs, seed=seed,
                              calibration=str(cal_file) if method != "float" else None)
            summary, ran = ensure_run(cfg, plan.run_dir(seed, method), limits=limits, progress=progress,
                                      allow_code_change=keep_stale)
            if ran:
                metric = next(k for k in ("test_accuracy", "test_ssim") if k in summary)
                echo(f"seed {seed}: {method} {metric} = {summary[metric]:.4f}")
    return plan.run_dirs()
