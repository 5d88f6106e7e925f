"""Save and resume a run: the host state, the board's snapshot and the step's pending pulse plan.

A checkpoint is written *before* a step's plan is sent (a write-ahead log entry: the
host state after the step's computation, the plan and its tag), and after a step
when a run stops on Ctrl-C (phase ``done``, nothing pending).  On a board with
snapshots the board's own state goes with it, so a resumed run ends exactly where
an uninterrupted one does.  Resuming restores all of it, drops the metrics logged
after it (keeping the decisions of earlier resumes of the pending step), and hands
back the part of the pending plan still to send, as the write-ahead protocol of the
run's target decides (:mod:`hil.training.write_ahead`).
"""

from __future__ import annotations

from hil.model import MLP
from hil.optim import Optimizer
from hil.run_store import RunStore
from hil.training.plan import StepPlan
from hil.training.state import Totals, load_state, save_state


class Checkpointer:
    """Checkpoints of the run in ``store`` (numbered generations, alternating between two array files)."""

    def __init__(self, store: RunStore, model: MLP, optimizer: Optimizer, totals: Totals, target):
        self.store, self.model, self.optimizer, self.totals, self.target = store, model, optimizer, totals, target
        self.generation = 0

    def save(self, step: int, phase: str, plan: StepPlan | None) -> None:
        """``phase``: ``before_send`` (``plan`` pending) or ``done`` (step complete, ``plan`` None)."""
        meta, arrays = save_state(self.model, self.optimizer, self.totals)
        blob = self.target.snapshot()
        if plan is not None:
            arrays.update(plan.arrays())
        meta.update({"generation": self.generation, "step": step, "phase": phase,
                     "pending": None if plan is None else plan.meta()})
        self.store.save_checkpoint(meta, arrays, blob)
        self.generation += 1

    def resume(self) -> tuple[int, StepPlan | None]:
        """Restore the last checkpoint; returns its step and what of its pending plan is still to send
        (None: the step was complete).  Opens the metrics log for appending."""
        meta, arrays, blob = self.store.load_checkpoint()
        self.generation = int(meta["generation"]) + 1
        self.target.restore(blob)
        load_state(self.model, self.optimizer, self.totals, meta, arrays)
        step, phase = int(meta["step"]), meta["phase"]
        if phase == "done":
            self.store.open_metrics(keep_while=lambda r: r["step"] <= step)
            return step, None
        # the decisions of earlier resumes of this step stay on record
        self.store.open_metrics(keep_while=lambda r: r["step"] < step or r.get("kind") == "resume")
        plan = StepPlan.from_checkpoint(meta["pending"], arrays)
        return step, self.target.write_ahead.resolve(step, plan)
