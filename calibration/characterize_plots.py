"""The PNG of each characterization routine (:func:`plot`), from its raw arrays."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from calibration.common import Measured, Raw


def plot(name: str, measured: Measured, path: Path) -> Path:
    """Write the PNG of the routine ``name`` to ``path``."""
    if name not in PLOTS:
        raise ValueError(f"no plot for {name!r}")
    return PLOTS[name](measured.raw, path)


def _read_all(raw: Raw, path: Path) -> Path:
    from calibration import plots

    return plots.plot_conductance_map(raw["g"], path, title="read-all conductance map")


def _program(raw: Raw, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from calibration import plots

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    targets, final = np.asarray(raw["targets"]), np.asarray(raw["final"])
    plots.conductance_image(fig, axes[0], targets, "target")
    plots.conductance_image(fig, axes[1], final, "final read")
    plots.difference_image(fig, axes[2], final - targets, "final - target", label="final - target (µS)")
    for ax in axes:
        ax.set(xlabel="column", ylabel="row")
    fig.suptitle(f"program: write-verify of {targets.size} devices")
    return plots._save(fig, path)


def _pulse_response(raw: Raw, path: Path) -> Path:
    from calibration import plots

    g = np.asarray(raw["g"])
    return plots.plot_xy(np.asarray(raw["pulses"]), {"mean": g.mean(axis=1) * 1e6, "device 0": g[:, 0] * 1e6},
                         path, "pulses", "G (µS)", "pulse response")


def _retention(raw: Raw, path: Path) -> Path:
    from calibration import plots

    t = np.maximum(np.asarray(raw["times"]), 1e-3)
    g, lv = np.asarray(raw["g"]), np.asarray(raw["level_index"])
    targets = np.asarray(raw["targets"])
    ys = {f"target {targets[lv == k][0] * 1e6:.3g} µS": g[:, lv == k].mean(axis=1) * 1e6 for k in np.unique(lv)}
    return plots.plot_xy(t, ys, path, "time after programming (s)", "mean G (µS)", "retention", logx=True)


def _endurance(raw: Raw, path: Path) -> Path:
    from calibration import plots

    cyc = np.asarray(raw["cycles"])
    return plots.plot_xy(cyc, {"G high": np.asarray(raw["g_high"]).mean(axis=1) * 1e6,
                               "G low": np.asarray(raw["g_low"]).mean(axis=1) * 1e6},
                         path, "cycles", "mean G (µS)", "endurance", logx=True)


def _iv_sweep(raw: Raw, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from calibration import plots

    volts, cur = np.asarray(raw["voltages"]), np.asarray(raw["currents"])
    shown = min(cur.shape[1], 8)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for d in range(shown):
        i_ua = np.abs(cur[-1, d]) * 1e6
        # at 0 V (start and end of the staircase) or with no current: a gap, not a spike down the log axis
        ax.semilogy(volts, np.where((i_ua > 0) & (np.abs(volts) > 1e-6), i_ua, np.nan), lw=0.8)
    ax.set(xlabel="voltage (V)", ylabel="|current| (µA)",
           title=f"I-V sweeps under compliance ({shown} of {cur.shape[1]} devices, last cycle)")
    return plots._save(fig, path)


def _forming(raw: Raw, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from calibration import plots

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    v = np.asarray(raw["v_form"])
    if np.isfinite(v).any():
        ax[0].hist(v[np.isfinite(v)], bins=20)
    else:
        ax[0].text(0.5, 0.5, "no device formed in this sweep", ha="center", va="center", transform=ax[0].transAxes)
    ax[0].set(xlabel="forming voltage (V)", ylabel="devices", title="forming voltage of the devices formed")
    ax[1].hist(np.asarray(raw["g_after"]) * 1e6, bins=40)
    ax[1].set(xlabel="G after forming (µS)", ylabel="devices", title="conductance after forming")
    return plots._save(fig, path)


PLOTS: dict[str, Callable[[Raw, Path], Path]] = {
    "read-all": _read_all, "program": _program, "pulse-response": _pulse_response, "retention": _retention,
    "endurance": _endurance, "iv-sweep": _iv_sweep, "forming": _forming,
}
