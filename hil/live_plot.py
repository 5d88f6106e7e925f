"""Learning curves drawn while runs train: the training loss per step and the test metric per epoch.

One figure can follow several runs (one line per method) as they train one after the other::

    fig = matplotlib.figure.Figure(figsize=(11, 3.8))
    ax_loss, ax_metric = fig.subplots(1, 2)
    curves = LiveCurves(ax_loss, ax_metric, task="digits-small", every_steps=10)
    train(cfg, out_dir, on_record=curves.follow("eapu"))   # hil.train.train's observer hook
    curves.draw()                                           # the last points, whatever the throttle

It redraws at most once every ``every_steps`` step records (a count, not a clock: the same records give
the same redraws on any machine).  In a Jupyter kernel with the inline backend the figure is one output
updated in place (an IPython display handle); elsewhere (a script, a GUI backend or ipympl, Agg in
tests) the canvas is redrawn and its events flushed.  IPython is imported only when it is already loaded.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

from hil.tasks import METRIC_AXES


def _inline_kernel() -> bool:
    """True in a Jupyter kernel whose figures are static images (the inline backend, or Agg): those are shown
    through a display handle; a kernel with an interactive backend (ipympl, Qt) redraws its canvas itself."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    import matplotlib

    backend = matplotlib.get_backend().lower()
    return "inline" in backend or backend == "agg"


class LiveCurves:
    """Loss and test-metric lines per method on two given axes of one figure, redrawn as records arrive."""

    def __init__(self, ax_loss, ax_metric, task: str, every_steps: int = 10):
        if every_steps < 1:
            raise ValueError(f"every_steps={every_steps}: redraw at most every N >= 1 steps")
        if ax_loss.figure is not ax_metric.figure:
            raise ValueError("the loss and metric axes must be on one figure")
        self.ax_loss, self.ax_metric, self.task, self.every_steps = ax_loss, ax_metric, task, every_steps
        self.fig = ax_loss.figure
        self.redraws = 0
        self._lines: dict[str, tuple] = {}  # method -> (loss line, metric line)
        self._points: dict[str, tuple[list, list, list, list]] = {}  # method -> steps, losses, epochs, metric
        self._steps_since_draw = 0
        self._metric: str | None = None
        self._handle = None
        self._inline = _inline_kernel()
        ax_loss.set(xlabel="training step", ylabel="training loss (batch mean)")
        ax_metric.set(xlabel="epoch", ylabel="test metric")
        from matplotlib.ticker import MaxNLocator

        ax_metric.xaxis.set_major_locator(MaxNLocator(integer=True))
        self._titles()

    # ---- the observer -------------------------------------------------------------------------
    def follow(self, method: str) -> Callable[[dict], None]:
        """The ``on_record`` observer for a run of ``method`` (its lines are labelled with it)."""
        return functools.partial(self, method=method)

    def __call__(self, record: dict, method: str) -> None:
        """Take one ``metrics.jsonl`` record of ``method``'s run (step and epoch records; others are ignored)."""
        kind = record.get("kind")
        if kind == "step":
            steps, losses, _, _ = self._series(method)
            self._append(steps, losses, record["step"], record["loss"])
            self._steps_since_draw += 1
        elif kind == "epoch":
            key = self._metric_of(record)
            if key is None:
                return
            _, _, epochs, values = self._series(method)
            self._append(epochs, values, record["epoch"] + 1, METRIC_AXES[key][1] * record[key])
        else:
            return
        self._update_lines(method)
        if self._steps_since_draw >= self.every_steps:
            self.draw()

    def draw(self) -> None:
        """Redraw now (the throttle's count starts again): in place in a notebook, on the canvas elsewhere."""
        for ax in (self.ax_loss, self.ax_metric):
            ax.relim()
            ax.autoscale_view()
        self._steps_since_draw = 0
        self.redraws += 1
        if self._inline:
            self._show_inline()
        else:
            self.fig.canvas.draw_idle()
            self.fig.canvas.flush_events()

    # ---- inside --------------------------------------------------------------------------------
    def _series(self, method: str) -> tuple[list, list, list, list]:
        if method not in self._points:
            self._points[method] = ([], [], [], [])
            (loss_line,) = self.ax_loss.plot([], [], lw=0.7, label=method)
            (metric_line,) = self.ax_metric.plot([], [], "o-", color=loss_line.get_color(), label=method)
            self._lines[method] = (loss_line, metric_line)
            self.ax_metric.legend(loc="lower right")
            self._titles()
        return self._points[method]

    @staticmethod
    def _append(xs: list, ys: list, x, y) -> None:
        """Add a point; a record at or before the last one (a resumed run replays from its checkpoint)
        replaces the points from there on, as the run's metrics.jsonl does."""
        while xs and xs[-1] >= x:
            xs.pop()
            ys.pop()
        xs.append(x)
        ys.append(y)

    def _update_lines(self, method: str) -> None:
        steps, losses, epochs, values = self._points[method]
        loss_line, metric_line = self._lines[method]
        loss_line.set_data(steps, losses)
        metric_line.set_data(epochs, values)

    def _metric_of(self, record: dict) -> str | None:
        if self._metric is None:
            self._metric = next((k for k in METRIC_AXES if k in record), None)
            if self._metric is None:
                log.warning("epoch record without a test metric (%s): nothing to plot", ", ".join(METRIC_AXES))
                return None
            self.ax_metric.set_ylabel(METRIC_AXES[self._metric][0])
            self._titles()
        return self._metric if self._metric in record else None

    def _titles(self) -> None:
        methods = ", ".join(self._points) or "no run yet"
        metric = METRIC_AXES[self._metric][0].split(" (")[0] if self._metric else "test metric"
        self.ax_loss.set_title(f"training loss, {self.task}\n{methods}")
        self.ax_metric.set_title(f"{metric} per epoch, {self.task}\n{methods}")

    def _show_inline(self) -> None:
        from IPython.display import display

        if self._handle is None:
            self._handle = display(self.fig, display_id=True)
            if "matplotlib.pyplot" in sys.modules:  # else the inline backend shows it once more at the cell's end
                sys.modules["matplotlib.pyplot"].close(self.fig)
        else:
            self._handle.update(self.fig)
