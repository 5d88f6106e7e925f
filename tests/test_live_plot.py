"""Training's observer hook (``train(..., on_record=)``) and the live learning curves fed by it.

The hook sees exactly the records a run logs to metrics.jsonl, in order; a resumed run (after Ctrl-C, or
after the observer itself raised) hands it only the records it logs itself, and ends as an uninterrupted
run does.  LiveCurves draws them under Agg (counted renders) and in a real Jupyter kernel (display handle).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import matplotlib
import pytest

from hil.live_plot import LiveCurves
from hil.train import Interrupted, TrainConfig, train
from tests.run_checks import assert_same_run, calibration_of
from tests.waiting import HANG_GUARD_SEC

pytestmark = pytest.mark.slow  # short trainings: digital and on a 64 x 64 emulated array

ROOT = Path(__file__).resolve().parents[1]
BOARD = "emu?rows=64&cols=64&seed=3"
FLOAT = {"task": "digits-small", "method": "float", "epochs": 2, "seed": 2, "checkpoint_every": 5}
STEPS_PER_EPOCH = 45


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _eapu(calibration: str) -> TrainConfig:
    return TrainConfig(task="digits-small", hidden=[16], method="eapu", board=BOARD, epochs=1, seed=2,
                       calibration=calibration, checkpoint_every=5)


class Failing(Exception):
    """What the observer raises in the test of an observer that fails."""


@pytest.fixture(scope="module")
def float_run(tmp_path_factory) -> tuple[Path, list[dict], dict]:
    out = tmp_path_factory.mktemp("float") / "run"
    seen: list[dict] = []
    summary = train(TrainConfig(**FLOAT), out, progress=False, on_record=seen.append)
    return out, seen, summary


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> str:
    return calibration_of(tmp_path_factory, BOARD, seed=3)


@pytest.fixture(scope="module")
def eapu_run(tmp_path_factory, calibration) -> tuple[Path, list[dict], dict]:
    out = tmp_path_factory.mktemp("eapu") / "run"
    seen: list[dict] = []
    summary = train(_eapu(calibration), out, progress=False, on_record=seen.append)
    return out, seen, summary


# ---- the hook ------------------------------------------------------------------------------------
def test_a_digital_run_hands_over_exactly_its_metrics_in_order(float_run):
    out, seen, summary = float_run
    assert seen == _metrics(out)
    assert [r["step"] for r in seen if r["kind"] == "step"] == list(range(summary["steps"]))
    assert [r["epoch"] for r in seen if r["kind"] == "epoch"] == [0, 1]


def test_an_array_run_hands_over_exactly_its_metrics_in_order(eapu_run):
    out, seen, summary = eapu_run
    assert seen == _metrics(out)
    assert [r["step"] for r in seen if r["kind"] == "step"] == list(range(STEPS_PER_EPOCH))
    assert summary["pulses_total"] > 0 and any(r["write_fraction"] > 0 for r in seen if r["kind"] == "step")


def test_after_ctrl_c_the_resumed_run_hands_over_only_its_new_records(tmp_path, float_run):
    out = tmp_path / "run"
    first: list[dict] = []

    def press_ctrl_c_at_step_20(record: dict) -> None:
        first.append(record)
        if record["kind"] == "step" and record["step"] == 20:
            os.kill(os.getpid(), signal.SIGINT)  # the run's own handler: stop after this step

    with pytest.raises(Interrupted):
        train(TrainConfig(**FLOAT), out, progress=False, on_record=press_ctrl_c_at_step_20)
    assert first == _metrics(out) and first[-1]["step"] == 20
    second: list[dict] = []
    summary = train(TrainConfig(**FLOAT), out, resume=True, progress=False, on_record=second.append)
    assert second and second[0]["step"] == 21
    assert first + second == _metrics(out)
    assert_same_run(summary, float_run[2])


def test_an_observer_that_raises_ends_the_run_which_resumes_like_an_uninterrupted_one(tmp_path, eapu_run,
                                                                                       calibration):
    out = tmp_path / "run"
    first: list[dict] = []

    def fail_at_step_12(record: dict) -> None:
        first.append(record)
        if record["kind"] == "step" and record["step"] == 12:
            raise Failing("the observer failed")

    with pytest.raises(Failing):
        train(_eapu(calibration), out, progress=False, on_record=fail_at_step_12)
    logged = _metrics(out)
    assert first == logged and logged[-1]["step"] == 12  # the record was logged before the observer saw it
    assert not (out / "summary.json").exists()

    second: list[dict] = []
    summary = train(_eapu(calibration), out, resume=True, progress=False, on_record=second.append)
    final = _metrics(out)
    # resumed from the checkpoint of step 10 (every 5 steps): the records from there on are logged again
    kept = len(final) - len(second)
    assert final[kept:] == second and final[:kept] == first[:kept]
    assert min(r["step"] for r in second) == 10 and all(r["step"] < 10 for r in final[:kept])
    assert [r["step"] for r in final if r["kind"] == "step"] == list(range(STEPS_PER_EPOCH))
    assert_same_run(summary, eapu_run[2], ignore={"wall_s"})

    # fed both streams, the live curves end with what metrics.jsonl holds (a replayed step replaces its point)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2)
    curves = LiveCurves(ax_loss, ax_acc, task="digits-small", every_steps=5)
    for record in first + second:
        curves(record, method="eapu")
    steps = [r for r in final if r["kind"] == "step"]
    assert list(ax_loss.lines[0].get_xdata()) == [r["step"] for r in steps]
    assert list(ax_loss.lines[0].get_ydata()) == [r["loss"] for r in steps]
    plt.close(fig)


# ---- the live curves -----------------------------------------------------------------------------
def test_live_curves_draw_two_methods_on_one_figure_under_agg(float_run, eapu_run):
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    renders = []
    fig.canvas.mpl_connect("draw_event", renders.append)
    curves = LiveCurves(ax_loss, ax_acc, task="digits-small", every_steps=10)
    for method, (_, records, _) in (("float", float_run), ("eapu", eapu_run)):
        for record in records:
            curves(record, method=method)
    n_steps = 2 * STEPS_PER_EPOCH + STEPS_PER_EPOCH
    assert curves.redraws == n_steps // 10 and len(renders) == curves.redraws  # each redraw renders once

    for k, (_, records, _) in enumerate((float_run, eapu_run)):
        steps = [r for r in records if r["kind"] == "step"]
        epochs = [r for r in records if r["kind"] == "epoch"]
        assert list(ax_loss.lines[k].get_xdata()) == [r["step"] for r in steps]
        assert list(ax_loss.lines[k].get_ydata()) == [r["loss"] for r in steps]
        assert list(ax_acc.lines[k].get_xdata()) == [r["epoch"] + 1 for r in epochs]
        assert list(ax_acc.lines[k].get_ydata()) == pytest.approx([100 * r["test_accuracy"] for r in epochs])
    assert [line.get_label() for line in ax_loss.lines] == ["float", "eapu"]

    curves.draw()  # the last points: every line inside its axes
    for ax, line in ((ax_loss, ax_loss.lines[0]), (ax_acc, ax_acc.lines[1])):
        lo, hi = ax.get_ylim()
        assert lo <= min(line.get_ydata()) and max(line.get_ydata()) <= hi
    assert ax_loss.get_xlabel() == "training step" and ax_acc.get_xlabel() == "epoch"
    assert ax_acc.get_ylabel() == "test accuracy (%)" and ax_loss.get_ylabel().startswith("training loss")
    for ax in (ax_loss, ax_acc):
        assert "digits-small" in ax.get_title() and "float, eapu" in ax.get_title()
    assert "test accuracy" in ax_acc.get_title()
    plt.close(fig)


def test_live_curves_refuse_a_throttle_below_one_step():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2)
    with pytest.raises(ValueError, match="every_steps=0"):
        LiveCurves(a, b, task="digits", every_steps=0)
    plt.close(fig)


KERNEL_CELL = """
import json
import matplotlib
import matplotlib.pyplot as plt
from calibration.run import calibrate  # the walkthrough's imports: the stack's plots must keep the kernel's backend
from hil.live_plot import LiveCurves
from hil.plots import plot_comparison
print("backend", matplotlib.get_backend())

fig, (ax_loss, ax_acc) = plt.subplots(1, 2)
curves = LiveCurves(ax_loss, ax_acc, task="digits-small", every_steps=10)
for line in open({metrics!r}):
    curves(json.loads(line), method="float")
curves.draw()
print("redraws", curves.redraws)
"""


@pytest.mark.timing
def test_in_a_jupyter_kernel_the_figure_is_one_output_updated_in_place(float_run):
    """A real IPython kernel (inline backend, kept when the stack's plot modules are imported) over ZMQ: one
    display_data, then only updates of it (no second copy of the figure at the cell's end)."""
    from jupyter_client.manager import start_new_kernel

    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel's own default: inline
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=HANG_GUARD_SEC, env=env, cwd=str(ROOT))
    messages: list[dict] = []
    try:
        reply = kc.execute_interactive(KERNEL_CELL.format(metrics=str(float_run[0] / "metrics.jsonl")),
                                       timeout=HANG_GUARD_SEC, output_hook=messages.append)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert reply["content"]["status"] == "ok", reply["content"]
    text = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
    assert "matplotlib_inline" in text.split("backend")[1].split()[0], text
    redraws = int(text.split("redraws")[1])
    assert redraws == 2 * STEPS_PER_EPOCH // 10 + 1
    shown = [m for m in messages if m["msg_type"] in ("display_data", "update_display_data")]
    assert [m["msg_type"] for m in shown] == ["display_data"] + ["update_display_data"] * (redraws - 1)
    assert len({m["content"]["transient"]["display_id"] for m in shown}) == 1
    assert all("image/png" in m["content"]["data"] for m in shown)
