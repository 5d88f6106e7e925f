"""The host training loop: gradients on the PC, sparse write pulses to the array.

One step: forward pass on the array (VMM per layer), loss and gradients on the
host (transposed VMM for the backward pass), an optimizer step giving the desired
weight change, each layer's update rule turning it into pulse counts for the
devices it keeps, and ONE sparse pulse batch for the whole network
(:mod:`hil.training.plan`).  Nothing reads the whole array during training except
the scheduled checks at epoch ends (counted).

Resumable: a checkpoint is written *before* a step's pulse batch is sent, and a
resumed run sends the batch only if the board has not applied it
(:mod:`hil.training.checkpointer`, :mod:`hil.training.write_ahead`).  Fault hook
for tests: ``HIL_FAULT_AT=<point>:<step>`` (:mod:`hil.training.faults`).

No dead ends: ``config.json`` (and, for an array method, ``board.json`` with the
board's identity) is written before anything else, so a run folder always holds
either a checkpoint to resume from or a configuration to start again from:
resuming a run stopped before its first checkpoint checks that the configuration
and the board are the same and starts it from the beginning (a calibration made
for the run is itself resumed).  A run is tied to its board's identity, not to
the address: resuming through another port that reaches the same board works,
another board is refused (:mod:`hil.training.board_setup`).

An observer (``on_record``) sees every record the run logs to ``metrics.jsonl`` (live plots,
:mod:`hil.live_plot`): each step's records are handed to it after the step, outside its timing.  An
exception it raises ends the run as any error does, after the records are logged; the run resumes.

This module runs the parts in order; each part is a module of :mod:`hil.training`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from drivers.address import open_board
from drivers.board import Board
from hil.model import MLP
from hil.nn import init_weights
from hil.optim import make_optimizer
from hil.run_store import RunStore
from hil.tasks import load_task
from hil.training.checkpointer import Checkpointer
from hil.training.config import (
    CodeChanged,
    TrainConfig,
    check_same_code,
    check_same_configuration,
    load_config_for_resume,
)
from hil.training.faults import FAULT_ENV, FAULT_EXIT_CODE, FaultHook
from hil.training.plan import StepPlan, StepPlanner
from hil.training.report import evaluate, summarize
from hil.training.state import Totals
from hil.training.target import NoBoard, OnBoard

# the public names (the command line, the demo, the examples and the tests use them from here)
__all__ = ["FAULT_ENV", "FAULT_EXIT_CODE", "CodeChanged", "Interrupted", "TrainConfig", "Trainer",
           "load_config_for_resume", "train"]

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Ctrl-C stopped the run after a completed step; it can be resumed."""


class Trainer:
    """One run in ``out_dir``: on ``board`` for an array method (``float``: no board, weights in host memory)."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, board: Board | None = None, progress: bool = True,
                 assume_applied: bool | None = None, on_record: Callable[[dict], None] | None = None,
                 allow_code_change: bool = False):
        """``assume_applied``: on resume, take the user's word on whether the pending batch was applied
        instead of deciding it from a read-back (only for boards without durable pulse tags).
        ``on_record``: called with (a copy of) every record this process logs to ``metrics.jsonl``, in order
        (a resumed run: only the records it logs itself).
        ``allow_code_change``: resume a checkpoint written by other code (recorded in the run), instead of
        refusing with :class:`CodeChanged`."""
        if cfg.on_array and board is None:
            raise ValueError("an array method needs a board")
        self.cfg = cfg
        self.on_record = on_record
        self.allow_code_change = allow_code_change
        self._code_changed_from: str | None = None  # the checkpoint's code, when resumed under other code
        self._unseen: list[dict] = []  # logged, not yet handed to on_record
        self.store = RunStore(out_dir, on_log=None if on_record is None else self._unseen.append)
        self.progress = progress
        self.task = load_task(cfg.task, cfg.seed)
        self.totals = Totals()
        self.fault = FaultHook.from_env()
        self.target = (OnBoard(cfg, board, self.store, self.totals, self.fault, progress, assume_applied)
                       if cfg.on_array else NoBoard(cfg))  # chosen once: the loop never asks which
        self._stop = False
        sizes = [self.task.n_in, *cfg.hidden, self.task.n_out]
        self.shapes = list(zip(sizes[:-1], sizes[1:]))
        rng = np.random.default_rng([cfg.seed, 1])
        scheme = "he" if cfg.activation == "relu" else "xavier"
        self.w0 = [init_weights(s, rng, scheme) for s in self.shapes]
        self.optimizer = make_optimizer(cfg.optimizer, lr=cfg.lr, **({"momentum": cfg.momentum}
                                                                     if cfg.optimizer == "sgd" else {}))
        self._last_eval: dict = {}

    def _build(self) -> None:
        biases = [np.zeros(n_out) for _, n_out in self.shapes]
        output = "identity" if self.cfg.task.startswith("digits") else "sigmoid"
        self.model = MLP(self.target.build_layers(self.w0, self.shapes), biases, self.cfg.activation, output)
        self.planner = StepPlanner(self.cfg, self.task, self.model, self.optimizer)
        self.total_steps = self.planner.steps_per_epoch * self.cfg.epochs
        self.checkpointer = Checkpointer(self.store, self.model, self.optimizer, self.totals, self.target)

    def evaluate(self) -> dict:
        return evaluate(self.model, self.task, self.cfg.eval_batch)

    # ---- public ---------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict:
        self.store.create()
        self._open(resume)
        self._build()
        start = self._resume() if resume and self.store.exists("checkpoint.json") else self._start(resume)
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        bar = self._progress(start)
        try:
            self._hand_over()
            for step in range(start, self.total_steps):
                t0 = time.perf_counter()
                plan = self._step(step)
                self.totals.wall_s += time.perf_counter() - t0
                self._hand_over()
                self._show(bar, plan)
                if self._stop and step < self.total_steps - 1:
                    self.target.settle()
                    self.checkpointer.save(step, "done", None)
                    raise Interrupted(f"stopped after step {step + 1} of {self.total_steps}")
            self.target.settle()
        finally:
            signal.signal(signal.SIGINT, previous)
            if bar is not None:
                bar.close()
            self.store.close()
        summary = summarize(self.cfg, self.totals, self.target, self.evaluate, self._last_eval)
        self.store.write_json("summary.json", summary)
        from hil.plots import plot_run

        plot_run(self.store.root, self.model, self.target.analog_layers)
        return summary

    def _open(self, resume: bool) -> None:
        """Make the folder a run (config.json first of all) or check it is this run; prepare the board."""
        if resume:
            check_same_configuration(self.store, self.cfg)
            self._code_changed_from = check_same_code(self.store, self.allow_code_change)
        elif self.store.exists("config.json"):
            raise ValueError(f"{self.store.root} already holds a run (config.json): choose another --out, "
                             "or --resume to continue that run")
        else:
            self.target.check_inputs(self.shapes)  # bad input refused before the folder becomes a run
            # first: from here on the folder is a run that --resume can continue or restart
            self.store.write_json("config.json", self.cfg.model_dump())
        self.target.prepare(resume)

    def _start(self, resume: bool) -> int:
        if resume:
            log.info("resume: %s holds no checkpoint yet; starting the run from the beginning", self.store.root)
        self.totals.run_nonce = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        self.store.open_metrics(keep_while=lambda rec: False)
        self.target.program(self.w0)
        return 0

    def _resume(self) -> int:
        step, plan = self.checkpointer.resume()
        if self._code_changed_from is not None:
            self._record_code_change(step)
        epochs = [r for r in self.store.read_metrics() if r.get("kind") == "epoch"]
        self._last_eval = epochs[-1] if epochs else {}
        if plan is not None:
            self._finish_step(step, plan)
        return step + 1

    def _record_code_change(self, step: int) -> None:
        """On record: the run goes on under other code than its checkpoint's (``--allow-code-change``)."""
        from protocols import provenance

        old, new = self._code_changed_from, provenance.source_fingerprint()
        log.warning("resuming %s, checkpointed by code %s, under code %s (--allow-code-change)", self.store.root,
                    old, new)
        self.totals.earlier_source_fingerprints.append(old)
        self.store.log({"kind": "code_change", "step": step, "from": old, "to": new})

    def _step(self, step: int) -> StepPlan:
        """Plan the step, checkpoint it (write-ahead) when due, send it."""
        with self.target.counting_wire():
            plan, counts = self.planner.plan(step, self.totals.run_nonce)
            self.totals.add_step(step, counts)
            plan = self.target.write_ahead.prepare(plan)
        self.target.host_wait()
        self.fault.at("before_checkpoint", step)
        if step % self.target.checkpoint_every == 0 or step == self.total_steps - 1:
            self.target.settle()
            # checkpoint traffic (board snapshots) is the run store's, not training's
            self.checkpointer.save(step, "before_send", plan)
        self.fault.at("after_checkpoint", step)
        self._finish_step(step, plan)
        return plan

    def _finish_step(self, step: int, plan: StepPlan) -> None:
        with self.target.counting_wire():
            self.target.send(plan, step)
            self.store.log(plan.record)
            if (step + 1) % self.planner.steps_per_epoch == 0:
                self._epoch_end(step)

    def _epoch_end(self, step: int) -> None:
        rec = {"kind": "epoch", "step": step, "epoch": step // self.planner.steps_per_epoch,
               **self.target.scheduled_check()}
        rec.update(self.evaluate())
        self.store.log(rec)
        self._last_eval = rec

    def _hand_over(self) -> None:
        """Give ``on_record`` the records logged since the last call: between steps, never between a step's
        pulses and its records (an exception it raises then leaves the run as a crash after the step would)."""
        while self._unseen:
            self.on_record(dict(self._unseen.pop(0)))

    def _on_sigint(self, *_: object) -> None:
        if self._stop:  # a second Ctrl-C: stop now (the checkpoint of the last step still holds)
            raise KeyboardInterrupt
        self._stop = True
        log.warning("Ctrl-C: stopping after the current step (press again to stop at once)")

    def _progress(self, start: int):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.total_steps, initial=start, desc=f"{self.cfg.method} {self.cfg.task}", unit="step",
                    disable=None)  # None: no bar when stderr is not a terminal (CI logs)

    def _show(self, bar, plan: StepPlan) -> None:
        if bar is None:
            return
        bar.update(1)
        bar.set_postfix(loss=f"{plan.record['loss']:.3f}", wf=f"{plan.record['write_fraction']:.2%}",
                        **{k[5:]: f"{v:.3f}" for k, v in self._last_eval.items() if k.startswith("test_")})


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True, limits=None,
          assume_applied: bool | None = None, on_record: Callable[[dict], None] | None = None,
          allow_code_change: bool = False) -> dict:
    """Run (or resume) a training run; opens and safely closes the board.  ``assume_applied``, ``on_record``,
    ``allow_code_change``: see :class:`Trainer`."""
    if not cfg.on_array:
        return Trainer(cfg, out_dir, None, progress, on_record=on_record,
                       allow_code_change=allow_code_change).run(resume)
    with open_board(cfg.board, limits) as board:
        return Trainer(cfg, out_dir, board, progress, assume_applied, on_record, allow_code_change).run(resume)
