"""PNG plots of a run and of a comparison of runs (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hil.run_store import RunStore  # noqa: E402


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_run(run_dir: str | Path, model=None, analog_layers=()) -> list[Path]:
    """Learning curves, write fraction per step, pulses per device, conductance maps."""
    root = Path(run_dir)
    records = RunStore(root).read_metrics()
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    out: list[Path] = []
    if steps:
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
        ax[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.6)
        ax[0].set(xlabel="step", ylabel="training loss", title="learning curve")
        key = next((k for k in ("test_accuracy", "test_ssim") if epochs and k in epochs[0]), None)
        if key:
            ax[1].plot([r["epoch"] + 1 for r in epochs], [r[key] for r in epochs], "o-")
            ax[1].set(xlabel="epoch", ylabel=key.replace("_", " "), title="test metric")
        _save(fig, root / "learning_curves.png")
        out.append(root / "learning_curves.png")

        fig, ax = plt.subplots(figsize=(6, 3.8))
        ax.plot([r["step"] for r in steps], [100 * r["write_fraction"] for r in steps], lw=0.6)
        ax.set(xlabel="step", ylabel="devices written (%)", title="write fraction per step")
        _save(fig, root / "write_fraction.png")
        out.append(root / "write_fraction.png")
    if analog_layers:
        counts = np.concatenate([layer.pulse_counts.ravel() for layer in analog_layers])
        fig, ax = plt.subplots(figsize=(6, 3.8))
        ax.hist(counts, bins=min(60, max(5, int(counts.max()) + 1)), log=True)
        ax.set(xlabel="update pulses received", ylabel="devices", title="pulses per device")
        _save(fig, root / "pulses_per_device.png")
        out.append(root / "pulses_per_device.png")

        fig, axes = plt.subplots(1, len(analog_layers), figsize=(4.5 * len(analog_layers), 4), squeeze=False)
        for k, (ax, layer) in enumerate(zip(axes[0], analog_layers)):
            im = ax.imshow(layer.g_est * 1e6, aspect="auto", cmap="viridis")
            ax.set(title=f"layer {k}: G+ | G- (µS)", xlabel="column in tile", ylabel="row")
            fig.colorbar(im, ax=ax)
        _save(fig, root / "conductance_maps.png")
        out.append(root / "conductance_maps.png")
    return out


def plot_comparison(summaries: list[dict], path: str | Path) -> Path:
    """Bar charts of metric, write fraction and write energy per run."""
    names = [f"{s['method']}" for s in summaries]
    key = "test_accuracy" if "test_accuracy" in summaries[0] else "test_ssim"
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.8))
    ax[0].bar(names, [s.get(key, np.nan) for s in summaries])
    ax[0].set(title=key.replace("_", " "))
    ax[1].bar(names, [100 * s["write_fraction_mean"] for s in summaries])
    ax[1].set(title="write fraction (%)")
    ax[2].bar(names, [max(s["write_energy_j"], 1e-18) for s in summaries])
    ax[2].set(title="write energy (J)", yscale="log")
    path = Path(path)
    _save(fig, path)
    return path
