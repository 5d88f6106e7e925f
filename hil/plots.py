"""PNG plots of a run and of a comparison of runs (matplotlib, no display needed)."""

from __future__ import annotations

import logging
from pathlib import Path

from calibration.plots import use_file_backend

use_file_backend()
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hil.run_store import RunStore  # noqa: E402
from hil.tasks import METRIC_AXES  # noqa: E402

log = logging.getLogger(__name__)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run_title(root: Path) -> str:
    """``METHOD on TASK, seed S (BOARD)`` from the run's configuration."""
    store = RunStore(root)
    cfg = store.read_json("config.json") if store.exists("config.json") else {}
    if not cfg:
        return root.name
    board = f" ({cfg['board']})" if cfg.get("method") != "float" and cfg.get("board") else ""
    return f"{cfg.get('method', '?')} on {cfg.get('task', '?')}, seed {cfg.get('seed', '?')}{board}"


def plot_run(run_dir: str | Path, model=None, analog_layers=()) -> list[Path]:
    """Learning curves, write fraction per step, pulses per device, conductance maps.

    A figure a run has nothing for (a digital run writes no device) is not drawn: the log says so.
    """
    root = Path(run_dir)
    records = RunStore(root).read_metrics()
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    name = _run_title(root)
    out: list[Path] = []
    if not steps:
        log.info("%s: no step logged, no learning curve drawn", root)
    else:
        key = next((k for k in ("test_accuracy", "test_ssim") if epochs and k in epochs[0]), None)
        fig, ax = plt.subplots(1, 2 if key else 1, figsize=(10 if key else 6, 3.8), squeeze=False)
        ax = ax[0]
        ax[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.6)
        ax[0].set(xlabel="step", ylabel="training loss", title="learning curve")
        if key:
            label, scale = METRIC_AXES[key]
            ax[1].plot([r["epoch"] + 1 for r in epochs], [scale * r[key] for r in epochs], "o-")
            ax[1].set(xlabel="epoch", ylabel=label,
                      title="test metric after each epoch")
        fig.suptitle(name)
        _save(fig, root / "learning_curves.png")
        out.append(root / "learning_curves.png")

        if analog_layers:
            fig, ax = plt.subplots(figsize=(6, 3.8))
            ax.plot([r["step"] for r in steps], [100 * r["write_fraction"] for r in steps], lw=0.6)
            ax.set(xlabel="step", ylabel="devices written (%)", title=f"write fraction per step\n{name}")
            _save(fig, root / "write_fraction.png")
            out.append(root / "write_fraction.png")
        else:
            log.info("%s: a digital run writes no device, no write-fraction plot", root)
    if analog_layers:
        counts = np.concatenate([layer.pulse_counts.ravel() for layer in analog_layers])
        fig, ax = plt.subplots(figsize=(6, 3.8))
        ax.hist(counts, bins=min(60, max(5, int(counts.max()) + 1)), log=True)
        ax.set(xlabel="update pulses received", ylabel="devices", title=f"pulses per device\n{name}")
        _save(fig, root / "pulses_per_device.png")
        out.append(root / "pulses_per_device.png")

        from calibration.plots import conductance_image

        fig, axes = plt.subplots(1, len(analog_layers), figsize=(5 * len(analog_layers), 4.2), squeeze=False)
        for k, (ax, layer) in enumerate(zip(axes[0], analog_layers)):
            conductance_image(fig, ax, layer.g_est, f"layer {k}: G+ | G-")
            ax.set(xlabel="column in tile", ylabel="row")
        fig.suptitle(f"conductance at the end of training: {name}")
        _save(fig, root / "conductance_maps.png")
        out.append(root / "conductance_maps.png")
    return out


def plot_comparison(groups, out_dir: str | Path, overwrite: bool = False) -> list[Path]:
    """One figure per task: test metric, write fraction per weight, total and write energy per group.

    Bars are means over seeds with 95 % confidence intervals; a method without a figure (``float``
    writes nothing) has no bar there.  Refuses to overwrite an existing figure unless ``overwrite``.
    """
    from hil.compare import group_labels

    out_dir = Path(out_dir)
    out: list[Path] = []
    panels = [("metric", None, 1.0, False), ("write_fraction_per_weight", "writes per weight per step (%)", 100.0,
                                                  False),
              ("energy_total_j", "total training energy (J)", 1.0, False),
              ("write_energy_j", "write energy (J)", 1.0, True)]
    for task in sorted({g.task for g in groups}):
        tg = [g for g in groups if g.task == task]
        path = out_dir / f"comparison_{task}.png"
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists: pass --out to another folder (or --overwrite)")
        with_board = len({g.board for g in tg}) > 1
        labels = group_labels(tg)
        metric = next((g.metric for g in tg if g.metric), "metric")
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2))
        for ax, (name, title, scale, log) in zip(axes, panels):
            if name == "metric":
                title, scale = METRIC_AXES.get(metric, (metric, 1.0))
            # the digital reference drives no array: no write or energy bar for it (not a bar at zero)
            est = [g.figures.get(name) if name == "metric" or g.method != "float" else None for g in tg]
            xs = [k for k, e in enumerate(est) if e is not None]
            means = [est[k].mean * scale for k in xs]
            errs = [0.0 if np.isnan(est[k].ci95) else est[k].ci95 * scale for k in xs]
            ax.bar(xs, means, yerr=errs, capsize=4, color="tab:blue", alpha=0.8)
            for x, m, e in zip(xs, means, errs):
                ax.annotate(f"{m:.3g}", (x, m + e), ha="center", va="bottom", fontsize=8,
                            xytext=(0, 3), textcoords="offset points")
            for x, g in enumerate(tg):
                if name != "metric" and g.method == "float":
                    ax.annotate("digital:\nno array", (x, 0), ha="center", va="bottom", fontsize=8, color="0.4",
                                xycoords=("data", "axes fraction"), xytext=(0, 3), textcoords="offset points")
            ax.set_xticks(range(len(tg)), labels, rotation=30, ha="right")
            ax.set_xlim(-0.6, len(tg) - 0.4)  # every group has its place, with a bar or not
            ax.set(title=title, ylabel=title, xlabel="method (board settings)" if with_board else "method")
            if log and means:
                ax.set_yscale("log")
            if not xs:
                ax.text(0.5, 0.5, "no method here has this figure", ha="center", va="center",
                        transform=ax.transAxes)
        n = max(len(g.seeds) for g in tg)
        fig.suptitle(f"task {task}: mean and 95 % CI over {n} seed{'s' if n != 1 else ''}")
        _save(fig, path)
        out.append(path)
    return out
