"""Where a run's weights live, chosen once: on a board (:class:`OnBoard`) or in host memory (:class:`NoBoard`).

The training loop talks to its target without asking which it is: build the layers,
program them, let the host's compute time pass, snapshot and restore, send a step's
plan, run the scheduled checks at an epoch's end, and report energy, board time and
retention.  The ``float`` reference has no board: every one of these is nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

from drivers.board import Board, Pending
from hil.exactly_once import ReadBackModel
from hil.layers import AnalogLinear, DigitalLinear
from hil.mapping import ConductanceMap, DoesNotFitError, fit_hint, place_tiles
from hil.run_store import RunStore
from hil.training.board_setup import BoardPreparation
from hil.training.config import TrainConfig
from hil.training.faults import FaultHook
from hil.training.plan import StepPlan
from hil.training.report import board_energy, no_energy, retention
from hil.training.state import Totals
from hil.training.write_ahead import DurableTags, NoWriteAhead, ReadBackJournal
from hil.update_rules import make_rule

MIN_PROGRAM_TOLERANCE_S = 0.5e-6
"""Write-verify tolerance floor (siemens) for the initial programming and the re-centring."""


class NoBoard:
    """The ``float`` reference: weights in host memory; nothing to prepare, send, check or measure."""

    def __init__(self, cfg: TrainConfig):
        self.checkpoint_every = cfg.checkpoint_every
        self.write_ahead = NoWriteAhead()
        self.analog_layers: list[AnalogLinear] = []

    def check_inputs(self, shapes: list[tuple[int, int]]) -> None:
        pass

    def prepare(self, resume: bool) -> None:
        pass

    def build_layers(self, w0: list[np.ndarray], shapes: list[tuple[int, int]]) -> list:
        return [DigitalLinear(w) for w in w0]

    def program(self, w0: list[np.ndarray]) -> None:
        pass

    def counting_wire(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def host_wait(self) -> None:
        pass

    def snapshot(self) -> bytes | None:
        return None

    def restore(self, blob: bytes | None) -> None:
        pass

    def send(self, plan: StepPlan, step: int) -> None:
        pass

    def settle(self) -> None:
        pass

    def scheduled_check(self) -> dict[str, Any]:
        return {}

    def energy(self) -> dict[str, Any]:
        return no_energy()

    def retention(self, metric: Callable[[], float]) -> dict[str, float] | None:
        return None

    def summary_extras(self) -> dict[str, Any]:
        return {}


class OnBoard:
    """Weights as conductance pairs on ``board``; ``totals`` counts what training costs it."""

    def __init__(self, cfg: TrainConfig, board: Board, store: RunStore, totals: Totals, fault: FaultHook,
                 progress: bool, assume_applied: bool | None):
        self.cfg, self.board, self.store, self.totals, self.fault = cfg, board, store, totals, fault
        self.assume_applied = assume_applied
        self.setup = BoardPreparation(cfg, board, store, progress)
        caps = board.info.capabilities
        self.checkpoint_every = cfg.checkpoint_every if caps.snapshot else 1
        self.write_ahead: DurableTags = DurableTags(board)
        self.analog_layers: list[AnalogLinear] = []
        self._pulse_in_flight: Pending | None = None  # a pulse batch sent without waiting for its report

    # ---- before training ----------------------------------------------------------------------
    def check_inputs(self, shapes: list[tuple[int, int]]) -> None:
        """What a new run can refuse without touching the board: the network must fit, a given
        calibration must be readable and (unless allowed) measured on this board."""
        rows, cols = self.board.info.rows, self.board.info.cols
        if self.cfg.method == "bp" and not self.board.info.capabilities.partial_pulses:
            raise ValueError(f"bp writes each update as asked, ending in a width-modulated partial pulse, which this "
                             f"board cannot make (protocol version {self.board.info.protocol_version}): use --method "
                             "bp-pulses, or update its firmware")
        try:
            place_tiles(shapes, rows, cols)
        except DoesNotFitError as exc:
            raise DoesNotFitError(f"{exc}; {fit_hint(self.cfg.task, rows, cols)}") from None
        if self.cfg.calibration:
            self.setup.load_given_calibration()

    def prepare(self, resume: bool) -> None:
        self.setup.prepare(resume)

    @property
    def calibration(self):
        return self.setup.calibration

    def _rule_parameters(self) -> dict[str, Any]:
        cfg, cal = self.cfg, self.calibration
        if cfg.method == "eapu":
            return {"delta_g_th_s": cfg.delta_g_th_k * cal.delta_g_th_s, "max_pulses": cfg.max_pulses}
        if cfg.method == "manhattan":
            return {"threshold_s": cal.pulse_step_mean_s["set"] / 2}
        return {"max_pulses": cfg.max_pulses}

    def build_layers(self, w0: list[np.ndarray], shapes: list[tuple[int, int]]) -> list:
        """One analog layer per weight matrix, each with its own update rule; the write-ahead protocol the
        board's tags call for."""
        info = self.board.info
        cmap = ConductanceMap.from_calibration(self.calibration, self.cfg.w_max)
        tiles = place_tiles(shapes, info.rows, info.cols)
        kw = self._rule_parameters()
        self.analog_layers = [AnalogLinear(self.board, t, cmap, make_rule(self.cfg.method, **kw)) for t in tiles]
        if not info.capabilities.durable_pulse_tags:
            model = ReadBackModel.from_calibration(self.calibration, cmap, info.g_lsb_s)
            self.write_ahead = ReadBackJournal(self.board, self.store, self.totals, model, self.analog_layers,
                                               self.assume_applied)
        return list(self.analog_layers)

    @property
    def tolerance_s(self) -> float:
        return max(self.calibration.write_noise_sigma_s, MIN_PROGRAM_TOLERANCE_S)

    def program(self, w0: list[np.ndarray]) -> None:
        """Write-verify the initial weights; the board's status after it is the energy baseline."""
        for layer, w in zip(self.analog_layers, w0):
            rep = layer.program(w, self.tolerance_s)
            self.totals.program_pulses += rep.pulses
            self.totals.program_energy_j += rep.energy_j
        self.totals.baseline = self.board.status().model_dump()

    # ---- during training ----------------------------------------------------------------------
    def counting_wire(self) -> contextlib.AbstractContextManager:
        return self.totals.counting_wire(self.board)

    @property
    def virtual_clock(self) -> bool:
        return self.board.info.capabilities.virtual_clock

    def host_wait(self) -> None:
        """The host's compute time of a step passes on a virtual board clock (a bench's clock runs by itself)."""
        if self.virtual_clock and self.cfg.host_step_sec > 0:
            self.board.wait(self.cfg.host_step_sec)

    def snapshot(self) -> bytes | None:
        return self.board.snapshot() if self.board.info.capabilities.snapshot else None

    def restore(self, blob: bytes | None) -> None:
        if blob is not None:
            self.board.restore(blob)
        self.board.set_profiles(*self.board.profiles)  # both ends agree on the profiles before anything is counted

    def settle(self) -> None:
        """Wait for the batch sent without waiting (a failure of it is raised here at the latest); its
        reply's bytes count as training traffic."""
        if self._pulse_in_flight is not None:
            handle, self._pulse_in_flight = self._pulse_in_flight, None
            with self.counting_wire():
                handle.result()

    def send(self, plan: StepPlan, step: int) -> None:
        """The plan's pulses, journalled around (boards without durable tags); then, on a board without VMM,
        the written devices read back for the next forward pass."""
        if plan.empty:
            return
        cols = self.board.info.cols
        self.write_ahead.sending(plan)
        if self.fault.armed("mid_pulses", step):  # a crash with a prefix of the board's order applied
            order = self.board.application_order(plan.batch(cols))
            self.board.pulse(plan.subset(np.sort(order[: order.size // 2])).batch(cols))
            self.fault.at("mid_pulses", step)
        self.settle()
        if isinstance(self.write_ahead, DurableTags):
            # no journal: the batch's report is not needed before the next forward VMM, which the board
            # executes after it (pipelining hides the batch's round trip; PROTOCOL.md §2.3)
            self._pulse_in_flight = self.board.pulse_async(plan.batch(cols), tag=int(plan.tag))
        else:
            self.board.pulse(plan.batch(cols), tag=int(plan.tag))
        self.write_ahead.sent(plan)
        self.fault.at("after_pulses", step)
        for layer in self.analog_layers:
            self.totals.scheduled_reads += layer.after_pulses(plan.flat)

    def scheduled_check(self) -> dict[str, Any]:
        """An epoch's end: read every tile, re-centre the pairs that left the band."""
        for layer in self.analog_layers:
            layer.refresh()
            self.totals.scheduled_reads += layer.g_est.size
            rep = layer.rebalance(self.tolerance_s)
            if rep is not None:
                self.totals.rebalance_pulses += rep.pulses
                self.totals.rebalance_pairs += rep.achieved_s.size // 2
        return {"rebalance_pairs_total": self.totals.rebalance_pairs}

    # ---- after training -----------------------------------------------------------------------
    def energy(self) -> dict[str, Any]:
        return board_energy(self.board, self.totals.baseline)

    def retention(self, metric: Callable[[], float]) -> dict[str, float] | None:
        return retention(self.board, metric) if self.virtual_clock else None

    def summary_extras(self) -> dict[str, Any]:
        # no conductance here: summary.json's _s fields are seconds (board_time_s, wall_s; docs/DESIGN.md,
        # "Units"); eapu's threshold is the run's config.json k times its calibration.json delta_g_th_s
        extras: dict[str, Any] = {"board": self.cfg.board}
        if self.setup.foreign_calibration is not None:
            extras["foreign_calibration"] = self.setup.foreign_calibration
        return extras
