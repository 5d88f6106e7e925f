# %% [markdown]
# # Calibrate, train, compare: a walkthrough on the emulator
#
# This notebook drives the stack from Python instead of the `hil` command line: it
# calibrates an emulated 64 x 64 array, trains the `digits-small` task with the digital
# reference (`float`), the every-step noisy write (`bp`) and error-aware probabilistic
# updates (`eapu`), and compares the three. Everything runs on the in-process emulator in
# about a minute; change `BOARD` to `visa:bench.toml` or `serial:/dev/ttyUSB0` to run it on
# hardware (docs/BENCH.md).
#
# The source is `examples/walkthrough.py` (jupytext "percent" format: open it as a notebook
# in VS Code or Jupyter with jupytext, or run it with `python examples/walkthrough.py`);
# `examples/walkthrough.ipynb` is made from it by `python examples/to_ipynb.py`.

# %%
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from calibration.run import CalibrationParams, calibrate
from drivers.address import open_board
from hil import compare as cmp
from hil.live_plot import LiveCurves
from hil.plots import plot_comparison
from hil.run_store import RunStore
from hil.train import TrainConfig, train

BOARD = "emu?rows=64&cols=64&seed=0"  # an emulated array; its seed draws its devices
OUT = Path(os.environ.get("HIL_EXAMPLE_OUT", "walkthrough-run"))  # every file this notebook writes
EPOCHS = 2
METHODS = ("float", "bp", "eapu")
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## 1. Calibrate
#
# The calibration measures read noise, stuck devices, the pulse response, the write noise
# and from it the EaPU threshold ΔGth, and drift. It writes `calibration.json` (the figures),
# `calibration.h5` (every raw read) and its plots. Running this cell again continues or
# reuses the calibration already in the folder.

# %%
with open_board(BOARD) as board:
    print(f"{board.info.name}: {board.info.rows} x {board.info.cols} devices")
    report = calibrate(board, OUT / "calibration", CalibrationParams(seed=0), resume=True, progress=False)
CALIBRATION = OUT / "calibration" / "calibration.json"
print(f"ΔGth = {report.delta_g_th_s * 1e6:.3g} µS ({report.delta_g_th_pulses} pulses per quantum)")
print(f"write noise = {report.write_noise_sigma_s * 1e6:.3g} µS per write event, "
      f"read noise = {100 * report.read_noise_rel:.2g} %, stuck = {100 * report.stuck_fraction:.2g} %")

# %% [markdown]
# The mean conductance change of one pulse shrinks as a device approaches its bound
# (soft bounds); ΔGth is the change below which a write is lost in the write noise.

# %%
fig, ax = plt.subplots(figsize=(6, 3.8))
for polarity, color in (("set", "tab:red"), ("reset", "tab:blue")):
    curve = report.pulse_step_curve[polarity]  # None where too few devices reached a conductance bin
    ax.errorbar(np.array(curve["g_s"]) * 1e6, np.array(curve["step_mean_s"], dtype=float) * 1e6,
                yerr=np.array(curve["step_sd_s"], dtype=float) * 1e6, fmt="o", ms=3, color=color, label=polarity)
ax.axhline(report.delta_g_th_s * 1e6, color="k", ls="--", label="ΔGth")
ax.set(xlabel="G (µS)", ylabel="|step| per pulse (µS)", title=f"pulse response of {BOARD}")
ax.legend()
plt.show()

# %% [markdown]
# ## 2. Train
#
# One run per method, each in its own folder with `config.json`, `metrics.jsonl` (one JSON
# object per step and per epoch), checkpoints, `summary.json` and plots. `train`'s
# `on_record` hook hands every record it logs to `LiveCurves`, which draws the learning curves
# while the runs train: the training loss per step and the test accuracy after each epoch, one
# line per method, redrawn every 10 steps. A finished run is not trained again: its curves
# are read back from its `metrics.jsonl`.

# %%
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
curves = LiveCurves(ax_loss, ax_acc, task="digits-small", every_steps=10)
summaries = {}
for method in METHODS:
    run_dir = OUT / method
    if (run_dir / "summary.json").is_file():
        for record in RunStore(run_dir).read_metrics():
            curves(record, method=method)
        summaries[method] = json.loads((run_dir / "summary.json").read_text())
    else:
        cfg = TrainConfig(task="digits-small", method=method, board=BOARD, epochs=EPOCHS, seed=0,
                          calibration=None if method == "float" else str(CALIBRATION))
        summaries[method] = train(cfg, run_dir, progress=False, on_record=curves.follow(method))
    curves.draw()  # the run's last points, whatever the throttle
    print(f"{method:5s} test accuracy {100 * summaries[method]['test_accuracy']:.1f} %, "
          f"{summaries[method]['pulses_total']} pulses")

# %% [markdown]
# ## 3. Compare
#
# `hil compare` groups runs by task x method x board settings; with several seeds per method
# it gives means with 95 % confidence intervals (one seed here: no interval). The energy
# ratios are computed within a task.

# %%
groups, ratios = cmp.compare([OUT / m for m in METHODS])
print(cmp.table(groups, ratios))
figures = plot_comparison(groups, OUT, overwrite=True)
fig, ax = plt.subplots(figsize=(12, 3.4))
ax.imshow(plt.imread(figures[0]))
ax.set_axis_off()
plt.show()
