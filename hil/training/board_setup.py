"""A run's board before training: its identity on record, and the calibration the run trains with.

``board.json`` (the board's identity first of all) is written before anything else
touches the board; a resumed run must reach the same board (by identity, not by
address).  The calibration is the run's own copy (``calibration.json``) when it has
one, else the one given (refused when measured on another board, unless allowed,
and then recorded as foreign), else one made for the run (itself resumable).
"""

from __future__ import annotations

import logging

from drivers.board import Board
from hil.run_store import RunStore
from hil.training.config import TrainConfig

log = logging.getLogger(__name__)


class BoardPreparation:
    """Identity and calibration of ``board`` for the run in ``store``."""

    def __init__(self, cfg: TrainConfig, board: Board, store: RunStore, progress: bool):
        self.cfg, self.board, self.store, self.progress = cfg, board, store, progress
        self.calibration = None
        self.foreign_calibration: dict | None = None

    def prepare(self, resume: bool) -> None:
        """Record (or on resume check) the board, settle the calibration and pulse with its profiles."""
        from calibration.report import CalibrationReport

        self._record_board(resume)
        if self.store.exists("calibration.json"):  # the run's own copy: what it was started with
            self.calibration = CalibrationReport.load(self.store.root / "calibration.json")
            self.foreign_calibration = self.store.read_json("board.json").get("foreign_calibration")
        elif self.cfg.calibration:
            if self.calibration is None:
                self.load_given_calibration()
            if self.foreign_calibration is not None:
                record = self.store.read_json("board.json")
                self.store.write_json("board.json", {**record, "foreign_calibration": self.foreign_calibration})
        else:
            self._calibrate()
        profiles = getattr(self.calibration, "profiles", None) or {}
        if "set" in profiles and "reset" in profiles:  # pulse with the profiles the calibration measured
            from drivers.limits import PulseProfile

            self.board.set_profiles(PulseProfile(**profiles["set"]), PulseProfile(**profiles["reset"]))
        if not self.store.exists("calibration.json"):
            self.store.write_json("calibration.json", self.calibration.model_dump(mode="json"))

    def _calibrate(self) -> None:
        from calibration.run import CalibrationParams, calibrate

        log.info("no calibration given: calibrating the board first")
        # resume=True: a calibration interrupted with this run continues; none yet starts afresh
        self.calibration = calibrate(self.board, self.store.root / "calibration", CalibrationParams(seed=self.cfg.seed),
                                     resume=True, progress=self.progress)

    def _record_board(self, resume: bool) -> None:
        """Write board.json (identity first of all), or on resume check the board is the run's board."""
        from calibration.storage import board_identity, describe_identity, identity_difference, identity_from_info

        identity = board_identity(self.board)
        if self.store.exists("board.json"):
            record = self.store.read_json("board.json")
            saved = record.get("identity") or identity_from_info(record["info"])
            if saved != identity:
                raise ValueError(
                    f"cannot resume: the run in {self.store.root} was made on board {describe_identity(saved)}, but "
                    f"{self.cfg.board} reaches board {describe_identity(identity)} "
                    f"({identity_difference(saved, identity)}); resume with --board pointing at the original board")
            record["addresses"] = [*record.get("addresses", []), self.cfg.board]
        else:
            record = {"identity": identity, "info": self.board.info.model_dump(mode="json"),
                      "limits": self.board.limits.model_dump(), "status": self.board.status().model_dump(),
                      "addresses": [self.cfg.board], "instrument_settings": self.board.settings_snapshot()}
        self.store.write_json("board.json", record)

    def load_given_calibration(self) -> None:
        """Load --calibration; one measured on another board is refused, unless allowed (then it is recorded)."""
        from calibration.report import CalibrationReport
        from calibration.storage import board_identity, describe_identity, identity_difference

        self.calibration = CalibrationReport.load(self.cfg.calibration)
        identity, measured = board_identity(self.board), self.calibration.board
        if measured == identity:
            return
        what = describe_identity(measured) if measured else "an unrecorded board"
        if not self.cfg.allow_foreign_calibration:
            raise ValueError(
                f"the calibration {self.cfg.calibration} was measured on board {what}, not on this run's board "
                f"{describe_identity(identity)} ({identity_difference(measured, identity)}); calibrate this board, "
                "or pass --allow-foreign-calibration to use it anyway")
        log.warning("using a calibration measured on board %s for board %s", what, describe_identity(identity))
        self.foreign_calibration = {"calibration": self.cfg.calibration, "measured_on": measured,
                                    "used_on": identity}
