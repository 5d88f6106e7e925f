"""What a run reports: test metrics, training energy by kind, retention after training, the summary.

Figures that need a board (energy, board time, retention) come from the run's
target (:mod:`hil.training.target`); this module puts them in ``summary.json``'s
fixed order of keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from drivers.board import Board
from hil.model import MLP
from hil.tasks import Task, accuracy, ssim
from hil.training.config import TrainConfig
from hil.training.state import Totals
from protocols import provenance
from protocols.version import software_version

RETENTION_SEC = {"1s": 1.0, "1h": 3600.0, "1d": 86400.0}
"""Board time after training at which the summary gives the test metric again, no writes in between."""
ENERGY_KINDS = ("write_device", "write_periphery", "read_vmm", "adc", "dac")


def evaluate(model: MLP, task: Task, eval_batch: int) -> dict:
    pred = model.predict(task.x_test, eval_batch)
    if task.kind == "classification":
        return {"test_accuracy": accuracy(pred, task.y_test)}
    return {"test_ssim": float(ssim(np.clip(pred, 0, 1), task.y_test, image_shape=task.image_shape)),
            "test_mse": float(np.mean((pred - task.y_test) ** 2))}


def headline_metric(metrics: dict) -> float:
    """The task's headline metric of an :func:`evaluate` result."""
    return metrics["test_accuracy"] if "test_accuracy" in metrics else metrics["test_ssim"]


def no_energy() -> dict[str, Any]:
    """The energy figures of a run without a board."""
    return {"energy_j": dict.fromkeys(ENERGY_KINDS, 0.0), "energy_total_j": 0.0, "write_energy_j": 0.0,
            "board_time_s": None}


def board_energy(board: Board, baseline: dict) -> dict[str, Any]:
    """Training energy (from ``baseline``, the board's status after the initial programming, to now), by kind."""
    end = board.status().model_dump()
    d = {k: end[k] - baseline.get(k, 0.0) for k in ("write_energy_j", "write_periphery_energy_j", "read_energy_j",
                                                    "adc_energy_j", "dac_energy_j", "clock_sec")}
    parts = {"write_device": d["write_energy_j"] - d["write_periphery_energy_j"],
             "write_periphery": d["write_periphery_energy_j"], "read_vmm": d["read_energy_j"],
             "adc": d["adc_energy_j"], "dac": d["dac_energy_j"]}
    return {"energy_j": parts, "energy_total_j": sum(parts.values()), "write_energy_j": d["write_energy_j"],
            "board_time_s": d["clock_sec"]}


def retention(board: Board, metric: Callable[[], float]) -> dict[str, float]:
    """``metric()`` after 1 s, 1 h and 1 d of board time from now, no writes in between (a virtual clock only:
    a bench would have to wait a day)."""
    t_end = board.clock()
    out = {}
    for name, after_sec in RETENTION_SEC.items():
        remaining = t_end + after_sec - board.clock()
        if remaining > 0:
            board.wait(remaining)
        out[name] = metric()
    return out


def summarize(cfg: TrainConfig, totals: Totals, target, metrics: Callable[[], dict], last_eval: dict) -> dict:
    """``summary.json``: ``metrics`` evaluates the test set (the last epoch's figures when there are some);
    the retention comes last, as it lets a day pass on the board."""
    t = totals
    figures = metrics() if not last_eval else {k: v for k, v in last_eval.items() if k.startswith("test_")}
    max_pulses = max((int(layer.pulse_counts.max()) for layer in target.analog_layers), default=0)
    summary: dict[str, Any] = {
        "software_version": software_version(), "source_fingerprint": provenance.source_fingerprint(),
        **({"earlier_source_fingerprints": t.earlier_source_fingerprints} if t.earlier_source_fingerprints else {}),
        "source_git": provenance.source_git(),
        "task": cfg.task, "method": cfg.method, "seed": cfg.seed, "epochs": cfg.epochs, "steps": t.steps,
        **figures,
        "write_fraction_per_weight_mean": t.write_fraction_per_weight_sum / t.steps if t.steps else 0.0,
        "write_fraction_mean": t.write_fraction_sum / t.steps if t.steps else 0.0,
        "pulses_total": t.pulses, "devices_written_total": t.devices_written,
        "max_pulses_per_device": max_pulses,
        **target.energy(),
        "wire_bytes_total": t.wire_bytes, "wall_s": t.wall_s,
        "rebalance_pulses": t.rebalance_pulses, "rebalance_pairs": t.rebalance_pairs,
        "saturated_updates_skipped": t.saturated, "scheduled_read_cells": t.scheduled_reads,
        "write_ahead_read_cells": t.write_ahead_reads,
        "program_pulses": t.program_pulses, "program_energy_j": t.program_energy_j,
    }
    summary["retention"] = target.retention(lambda: headline_metric(metrics()))
    summary.update(target.summary_extras())
    return summary
