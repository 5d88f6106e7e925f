"""One training step's computation, up to (not including) its pulses: a typed :class:`StepPlan`.

The planner draws the step's minibatch, runs the forward pass (VMMs on the array),
the loss and the backward pass on the host, the optimizer step, and asks every
layer for its update (an analog layer's rule turns it into pulse counts; a digital
layer applies it).  The result is ONE sparse pulse batch for the whole network,
sorted by flat device index, with the tag the board will remember it by and the
step's metrics record -- what the write-ahead checkpoint holds before it is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from drivers.board import PulseBatch
from hil.model import MLP
from hil.nn import mse, softmax_cross_entropy
from hil.optim import Optimizer, scheduled_lr
from hil.tasks import Task
from hil.training.config import TrainConfig
from protocols.unit_names import old_name

PREFIX = "pending."
"""Names of a plan's arrays in a checkpoint (``pending.flat``, ...): fixed, old run folders resume."""


@dataclass(frozen=True)
class StepPlan:
    """A step's pulse batch: device ``flat[k]`` gets ``counts[k]`` pulses (signed: SET > 0), the last of
    them ``last_width_sec[k]`` seconds wide; ``tag``: what the board remembers it by (run nonce << 32 | step + 1);
    ``record``: the step's metrics line; ``g_before``: the devices read just before it was checkpointed
    (boards without durable tags, :mod:`hil.exactly_once`), else None."""

    flat: np.ndarray
    counts: np.ndarray
    last_width_sec: np.ndarray | None
    tag: int
    record: dict
    g_before: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return self.flat.size == 0

    def batch(self, n_cols: int) -> PulseBatch:
        return PulseBatch(self.flat // n_cols, self.flat % n_cols, self.counts, self.last_width_sec)

    def subset(self, keep: np.ndarray) -> "StepPlan":
        """The plan for the devices at positions ``keep`` only."""
        def take(a):
            return None if a is None else a[keep]

        return replace(self, flat=self.flat[keep], counts=self.counts[keep], last_width_sec=take(self.last_width_sec),
                       g_before=take(self.g_before))

    def with_read(self, g_before: np.ndarray) -> "StepPlan":
        return replace(self, g_before=g_before)

    # ---- in a checkpoint --------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        out = {"flat": self.flat, "counts": self.counts, "last_width_sec": self.last_width_sec,
               "g_before": self.g_before}
        return {PREFIX + k: v for k, v in out.items() if v is not None}

    def meta(self) -> dict:
        return {"tag": self.tag, "record": self.record}

    @classmethod
    def from_checkpoint(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "StepPlan":
        widths = arrays.get(PREFIX + "last_width_sec", arrays.get(PREFIX + old_name("last_width_sec")))  # older: _s
        return cls(arrays[PREFIX + "flat"], arrays[PREFIX + "counts"], widths,
                   int(meta["tag"]), meta["record"], arrays.get(PREFIX + "g_before"))


@dataclass(frozen=True)
class StepCounts:
    """What a step's plan writes, for the run's totals."""

    devices_written: int
    pulses: int
    saturated_pairs: int
    devices_held: int

    @property
    def write_fraction(self) -> float:
        return self.devices_written / self.devices_held if self.devices_held else 0.0

    @property
    def write_fraction_per_weight(self) -> float:
        # one device of a pair per written weight (plan_update), two devices per weight held
        return 2 * self.devices_written / self.devices_held if self.devices_held else 0.0


class StepPlanner:
    """Turns step ``k`` of a run into its :class:`StepPlan` (the model's digital parts updated on the way)."""

    def __init__(self, cfg: TrainConfig, task: Task, model: MLP, optimizer: Optimizer):
        self.cfg, self.task, self.model, self.optimizer = cfg, task, model, optimizer
        self.n_train = len(task.x_train)
        self.steps_per_epoch = -(-self.n_train // cfg.batch_size)

    def minibatch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, b = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.cfg.seed, 2, epoch]).permutation(self.n_train)
        idx = perm[b * self.cfg.batch_size:(b + 1) * self.cfg.batch_size]
        return self.task.x_train[idx], self.task.y_train[idx]

    def _loss(self, out: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        if self.cfg.loss == "cross_entropy":
            return softmax_cross_entropy(out, y)
        return mse(out, y)

    def plan(self, step: int, run_nonce: int) -> tuple[StepPlan, StepCounts]:
        x, y = self.minibatch(step)
        out, cache = self.model.forward(x)
        loss, d_out = self._loss(out, y)
        gw, gb = self.model.backward(cache, d_out)
        self.optimizer.lr = scheduled_lr(self.cfg.lr, self.cfg.lr_schedule, step,
                                         self.steps_per_epoch * self.cfg.epochs)
        deltas = self.optimizer.step(gw + gb)
        n = len(self.model.layers)
        dws, dbs = deltas[:n], deltas[n:]
        for k in range(n):
            self.model.biases[k] = self.model.biases[k] + dbs[k]
        rng = np.random.default_rng([self.cfg.seed, 3, step])  # drawn from layer to layer, in order
        updates = [layer.update(dw, rng) for layer, dw in zip(self.model.layers, dws)]
        counts = StepCounts(sum(u.stats.devices_written for u in updates), sum(u.stats.pulses for u in updates),
                            sum(u.stats.saturated_pairs for u in updates), sum(u.devices_held for u in updates))
        record = {"kind": "step", "step": step, "epoch": step // self.steps_per_epoch, "loss": loss,
                  "write_fraction": counts.write_fraction, "devices_written": counts.devices_written,
                  "pulses": counts.pulses}
        flat = np.concatenate([u.flat for u in updates])
        order = np.argsort(flat)
        plan = StepPlan(flat[order], np.concatenate([u.counts for u in updates])[order],
                        np.concatenate([u.last_width_sec for u in updates])[order], (run_nonce << 32) | (step + 1), record)
        return plan, counts
