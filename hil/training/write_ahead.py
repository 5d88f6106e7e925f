"""Exactly once: how a resumed run knows whether the pulse batch of its write-ahead checkpoint was applied.

A step's batch is checkpointed *before* it is sent.  A board with durable pulse tags
(``capabilities.durable_pulse_tags``) remembers the tag of the last batch it applied
(:class:`DurableTags`): a resume compares it with the checkpoint's.  A board whose tag
dies with the host (the VISA bench) gets a read of the devices the batch will pulse,
kept in the checkpoint, and a journal on disk written around the send
(:class:`ReadBackJournal`): a resume reads the devices again and decides from the
change (and the journal) which of them were applied (:mod:`hil.exactly_once`), logs
the decision and its confidence, and sends only the rest -- or, when the read-back
cannot tell, stops and asks the user (``--assume-applied`` / ``--assume-not-applied``).
The ``float`` method has no board and nothing to decide (:class:`NoWriteAhead`).
"""

from __future__ import annotations

import logging

import numpy as np

from drivers.board import Board
from hil.exactly_once import BatchDecision, ReadBackModel, UndecidedBatch, assumed, decide
from hil.run_store import RunStore
from hil.training.plan import StepPlan
from hil.training.state import Totals

log = logging.getLogger(__name__)

PULSE_JOURNAL = "pulse_journal.json"


class NoWriteAhead:
    """No board: a plan is sent (to host memory) exactly when it is made; nothing to prepare or decide."""

    def prepare(self, plan: StepPlan) -> StepPlan:
        return plan

    def sending(self, plan: StepPlan) -> None:
        pass

    def sent(self, plan: StepPlan) -> None:
        pass

    def resolve(self, step: int, plan: StepPlan) -> StepPlan:
        return plan


class DurableTags(NoWriteAhead):
    """The board remembers the tag of the last batch it applied; tags carry the run's nonce."""

    def __init__(self, board: Board):
        self.board = board

    def resolve(self, step: int, plan: StepPlan) -> StepPlan:
        """The part of the checkpoint's pending ``plan`` still to send: all of it, or none."""
        last = self.board.status().last_pulse_tag
        applied = (last >> 32) == (plan.tag >> 32) and last >= plan.tag  # only a tag of this very run counts
        if not applied:
            return plan
        log.info("resume: the board already applied the batch of step %d", step)
        return plan.subset(np.zeros(0, np.int64))


class ReadBackJournal(DurableTags):
    """No durable tags: a read of the batch's devices in the checkpoint and a journal around the send."""

    def __init__(self, board: Board, store: RunStore, totals: Totals, model: ReadBackModel, layers: list,
                 assume_applied: bool | None):
        super().__init__(board)
        self.store, self.totals, self.model, self.layers = store, totals, model, layers
        self.assume_applied = assume_applied

    def prepare(self, plan: StepPlan) -> StepPlan:
        """Read the devices the batch will pulse, for the write-ahead checkpoint."""
        if plan.empty:
            return plan
        cols = self.board.info.cols
        g_before = self.board.read_cells(plan.flat // cols, plan.flat % cols)
        self.totals.count_reads(plan.flat.size, write_ahead=True)
        return plan.with_read(g_before)

    def sending(self, plan: StepPlan) -> None:
        self._journal(plan, "sending")

    def sent(self, plan: StepPlan) -> None:
        self._journal(plan, "sent")

    def _journal(self, plan: StepPlan, state: str) -> None:
        """Record on disk that the batch is being sent / was sent (:mod:`hil.exactly_once`)."""
        if plan.g_before is not None:
            self.store.write_json(PULSE_JOURNAL, {"tag": int(plan.tag), "state": state})

    def _journal_state(self, tag: int) -> str:
        if not self.store.exists(PULSE_JOURNAL):
            return "none"
        entry = self.store.read_json(PULSE_JOURNAL)
        return entry["state"] if entry.get("tag") == tag else "none"

    def resolve(self, step: int, plan: StepPlan) -> StepPlan:
        if plan.g_before is None:  # an empty batch: nothing was read ahead of it, the tag decides
            return super().resolve(step, plan)
        with self.totals.counting_wire(self.board):
            return plan.subset(self._unapplied(step, plan))

    def _unapplied(self, step: int, plan: StepPlan) -> np.ndarray:
        """Positions of the plan's devices still to pulse, decided from a read-back (or the user's word)."""
        batch = plan.batch(self.board.info.cols)
        order = self.board.application_order(batch)
        g_after = self.board.read_cells(batch.rows, batch.cols)
        self.totals.count_reads(g_after.size, write_ahead=True)
        if self.assume_applied is not None:
            decision = assumed(self.assume_applied, g_after.size)
        else:
            set_w, reset_w = self.board.profiles[0].width_sec, self.board.profiles[1].width_sec
            profile_w = np.where(plan.counts > 0, set_w, reset_w)
            widths = plan.last_width_sec
            frac = np.ones(g_after.size) if widths is None else np.minimum(widths / profile_w, 1.0)
            decision = decide(self.model, plan.g_before, g_after, plan.counts, frac, order,
                              self._journal_state(plan.tag))
        self._log_decision(step, decision)
        if decision.error_probability > decision.max_error_probability:  # NaN (the user's word) passes
            raise UndecidedBatch(
                f"cannot tell whether the pulses of step {step + 1} reached the devices before the crash "
                f"({decision.describe()}); inspect the devices of that step (board.json, checkpoint), then resume "
                "saying whether they did")
        applied = order[: decision.devices_applied]
        for layer in self.layers:  # the devices just read: their estimate is the read
            layer.take_measured(plan.flat[applied], g_after[applied])
        return np.sort(order[decision.devices_applied:])

    def _log_decision(self, step: int, decision: BatchDecision) -> None:
        log.warning("resume, step %d: pending pulse batch %s", step + 1, decision.describe())
        self.store.log({"kind": "resume", "step": step, "method": "user" if decision.assumed else "read-back",
                        **decision.record()})
