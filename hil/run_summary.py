"""The short results table ``hil train`` ends with (``--json`` prints the whole summary instead)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _energy(j: float) -> str:
    for unit, scale in (("J", 1.0), ("mJ", 1e-3), ("µJ", 1e-6), ("nJ", 1e-9), ("pJ", 1e-12)):
        if abs(j) >= scale:
            return f"{j / scale:.3g} {unit}"
    return f"{j:.3g} J"


def eapu_threshold_s(run_dir: Path) -> float | None:
    """The threshold (siemens) an eapu run used: its ``config.json`` factor k times its ``calibration.json``
    ΔGth; None for other methods or a folder without them."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
        if config.get("method") != "eapu":
            return None
        return config["delta_g_th_k"] * json.loads((run_dir / "calibration.json").read_text())["delta_g_th_s"]
    except (OSError, KeyError, TypeError, ValueError):
        return None


def summary_table(summary: dict[str, Any], summary_path: str | Path) -> str:
    """A few lines a person reads: what was trained, how well, at what cost, and where the files are."""
    rows: list[tuple[str, str]] = [("run", f"{summary['method']} on {summary['task']}, seed {summary['seed']}, "
                                          f"{summary['epochs']} epochs ({summary['steps']} steps)")]
    if summary.get("board"):
        rows.append(("board", str(summary["board"])))
    if "test_accuracy" in summary:
        rows.append(("test accuracy", f"{100 * summary['test_accuracy']:.1f} %"))
    if "test_ssim" in summary:
        rows.append(("test SSIM", f"{summary['test_ssim']:.3f}"))
    retention = summary.get("retention")
    if retention:
        rows.append(("after 1 d idle", f"{100 * retention['1d']:.1f} %" if "test_accuracy" in summary
                     else f"{retention['1d']:.3f}"))
    if summary.get("board"):
        rows.append(("devices written", f"{100 * summary['write_fraction_mean']:.2f} % per step, "
                                        f"{summary['pulses_total']} pulses"))
        rows.append(("energy", f"{_energy(summary['energy_total_j'])} total, "
                               f"{_energy(summary['write_energy_j'])} writing"))
        threshold = eapu_threshold_s(Path(summary_path).parent)
        if threshold is not None:
            rows.append(("ΔGth used", f"{threshold * 1e6:.3g} µS"))
    rows.append(("training took", f"{summary['wall_s']:.1f} s"))
    rows.append(("summary", str(summary_path)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
