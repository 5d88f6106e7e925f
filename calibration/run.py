"""The whole calibration of a board: stages, raw data, report, plots, resume.

:func:`calibrate` is what ``hil calibrate`` and the training loop (``hil train``
without ``--calibration``) both call::

    report = calibrate(board, out_dir, CalibrationParams(seed=1), resume=False, progress=True)

Stages, in order (each one a module of this package and an entry of
:data:`calibration.stages.REGISTRY`, which the run, resume, the HDF5 layout and the
report all follow):

==================  =====================================================================
``read_noise``      repeated reads of a random sample -> relative read noise
``stuck_map``       one SET and one RESET event for every device -> stuck map
``pulse_response``  SET/RESET curves of a sample of responsive devices -> soft-bounds fits
``write_noise``     events of n pulses near the SET/RESET balance -> s, sigma_rel, step scale
``drift``           programmed levels read on the board clock -> log drift fit
==================  =====================================================================

then the derived figures (:mod:`calibration.report_builder`): the mean step at
mid-window (pulse-response shape times the write-noise stage's direct step scale),
ΔGth and its quantum (:mod:`calibration.threshold`) and the device-to-device spreads
(:mod:`calibration.d2d`).

Files in ``out_dir``: ``calibration.json`` (the :class:`CalibrationReport`),
``calibration.h5`` (every stage's raw arrays with units, parameters, board-clock
and wall time stamps; saved atomically as each stage ends) and PNG plots.  With
``resume`` the completed stages are read back from ``calibration.h5`` and only the
rest is measured; the board identity (not its address) and the parameters must
match.  On a board that can snapshot its state (the emulator) the state saved with
the last completed stage is restored first, so a resumed calibration ends exactly
where an uninterrupted one does; a real board simply continues from where it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, create_model

from calibration.atomic_files import atomic_write_bytes
from calibration.common import Raw, Stopwatch, now_iso
from calibration.report import CalibrationReport
from calibration.report_builder import build_report
from calibration.stages import BY_NAME, REGISTRY, STAGES, Earlier, Stage
from calibration.storage import RawStore, board_identity
from calibration.stuck import STAGE as STUCK
from drivers.board import Board
from drivers.limits import PulseProfile, check_event_pulses, check_profile
from protocols.unit_names import AcceptsOldSecondNames, upgrade_old_names

log = logging.getLogger(__name__)

__all__ = ["H5_NAME", "JSON_NAME", "STAGES", "CalibrationParams", "calibrate", "pulses_per_device", "write_plots"]

JSON_NAME = "calibration.json"
H5_NAME = "calibration.h5"
REPORT_UNITS = 40  # progress units of the report and plots


class RunParams(AcceptsOldSecondNames):
    """The run-wide part of :class:`CalibrationParams` (the per-stage parameters come from the registry)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, description="seed of every random choice (device samples, bootstraps)")
    sample: int | None = Field(None, ge=1, description="devices per sampled stage (read noise, pulse response, "
                                                       "write noise, drift); None: each stage's default")
    delta_g_th_snr1_multiple: float = Field(
        1.0, gt=0, validation_alias=AliasChoices("delta_g_th_snr1_multiple", "k"),
        description="ΔGth as a multiple of the SNR=1 change (the change of one write event whose mean equals its "
                    "noise); read from ``k`` in older parameter files")
    drift_delay_sec: float | None = Field(None, ge=0, description="write-to-use delay whose drift spread is added "
                                                               "to the noise in quadrature")
    set_profile: PulseProfile | None = Field(None, description="SET pulse to calibrate (default: the board's current)")
    reset_profile: PulseProfile | None = None
    plots: bool = Field(True, description="write the PNG plots")

    def stage_params(self, n_array: int | None = None) -> dict[str, BaseModel]:
        """Per-stage parameters with the run's seed and sample size applied.

        Without an explicit ``sample`` each stage keeps its default size, but at most
        90 % of an ``n_array``-device array (room for stuck devices on small arrays).
        """
        out = {}
        for stage in REGISTRY:
            p = getattr(self, stage.params_field)
            upd = {"seed": self.seed}
            if stage.sampled:
                if self.sample is not None:
                    upd["n_devices"] = self.sample
                elif n_array is not None:
                    upd["n_devices"] = max(stage.min_devices(), min(p.n_devices, int(0.9 * n_array)))
            out[stage.name] = p.model_copy(update=upd)
        return out

    def fingerprint(self) -> dict:
        """The parameters a resumed run must share with the original (plots do not matter)."""
        return self.model_dump(mode="json", exclude={"plots"})

    @staticmethod
    def upgrade_fingerprint(old: dict) -> dict:
        """A fingerprint stored by an older version, in today's field names."""
        old = upgrade_old_names(old)  # fingerprints from before seconds were _sec: drift_delay_sec, drift.t_max_sec, set_profile.width_sec ...
        if "k" in old and "delta_g_th_snr1_multiple" not in old:
            old = {("delta_g_th_snr1_multiple" if k == "k" else k): v for k, v in old.items()}
        return old


CalibrationParams = create_model(
    "CalibrationParams", __base__=RunParams, __module__=__name__,
    __doc__="Everything a calibration run depends on (besides the board and its state): the run-wide "
            "settings of :class:`RunParams` and one field per stage of the registry "
            "(``read_noise``, ``stuck``, ``pulse_response``, ``write_noise``, ``drift``).",
    **{s.params_field: (s.params_model, s.params_model()) for s in REGISTRY},
)


class _StageTicker:
    """Counts the units a stage reports, so that the rest of its share can be added when it ends."""

    def __init__(self, tick):
        self.tick, self.done = tick, 0.0

    def __call__(self, k: float) -> None:
        self.done += k
        self.tick(k)

    def finish(self, units: float) -> None:
        if units > self.done:
            self.tick(units - self.done)


def _progress_bar(enabled, total: float, desc: str = "calibrate"):
    """A tqdm bar with its time estimate (none when stderr is not a terminal) and the tick that advances it."""
    if callable(enabled):
        return enabled, None
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", desc=desc, dynamic_ncols=True, disable=None,
               bar_format="{l_bar}{bar}| {percentage:3.0f}% [{elapsed}<{remaining}]")
    return (lambda k: bar.update(k)), bar


@dataclass
class _Run:
    """State of one calibration run as its stages complete."""

    board: Board
    params: CalibrationParams
    stage_params: dict[str, BaseModel]
    store: RawStore
    done_before: list[str]
    tick: Callable[[float], None] | None
    results: dict[str, BaseModel] = field(default_factory=dict)
    raws: dict[str, Raw] = field(default_factory=dict)
    stamps: dict[str, dict] = field(default_factory=dict)

    @property
    def n_all(self) -> int:
        return self.board.info.rows * self.board.info.cols


def calibrate(board: Board, out_dir: str | Path, params: CalibrationParams | None = None, resume: bool = False,
              progress: bool | Callable[[float], None] = True) -> CalibrationReport:
    """Calibrate ``board``; writes ``out_dir``/calibration.json, calibration.h5 and plots.

    Raises ``ValueError`` for parameters the board cannot satisfy (e.g. a sample
    larger than the array), :class:`~calibration.storage.ResumeRefused` when resumed
    data do not match, and the board's own errors (:class:`drivers.errors.BoardError`).
    Stages finished before an error stay in ``calibration.h5``.
    """
    params = params or CalibrationParams()
    out = Path(out_dir)
    wall0, mono0 = time.time(), time.monotonic()
    sp = _checked_stage_params(board, params)
    set_p, reset_p = _apply_profiles(board, params)
    identity = board_identity(board)
    settings = board.settings_snapshot()  # the instruments' settings the calibration ran with
    store = RawStore(out / H5_NAME)
    done = store.start(identity, board.info.model_dump(mode="json"), params.fingerprint(), resume,
                       extra={"address": getattr(board, "address", ""), "instrument_settings": settings},
                       upgrade_params=CalibrationParams.upgrade_fingerprint)
    _restore_snapshot(board, store, done)
    units = {s.name: s.progress_units(sp[s.name]) for s in REGISTRY}
    tick, bar = _progress_bar(progress, sum(units.values()) + REPORT_UNITS)
    clock0 = board.clock()
    run = _Run(board, params, sp, store, done, tick)
    try:
        for stage in REGISTRY:
            _complete_stage(run, stage, units[stage.name])
        report = build_report(params, identity, set_p, reset_p, run.results, run.raws)
        _store_pulses_per_device(run, report)
        files = {"report": JSON_NAME, "raw": H5_NAME}
        if params.plots:
            files["plots"] = [p.name for p in write_plots(out, run.results, run.raws, report)]
        if tick:
            tick(REPORT_UNITS)
    finally:
        if bar is not None:
            bar.close()
    report.instrument_settings = settings
    report.run = {"address": getattr(board, "address", ""), "wall_start": time.strftime(
        "%Y-%m-%dT%H:%M:%S", time.localtime(wall0)), "wall_end": now_iso(),
        "wall_duration_sec": time.monotonic() - mono0, "board_clock_start_sec": clock0,
        "board_clock_end_sec": board.clock(), "resumed_stages": [s for s in STAGES if s in done],
        "stages": run.stamps, "files": files}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / JSON_NAME, report.model_dump_json(indent=2).encode())
    return report


def _checked_stage_params(board: Board, params: CalibrationParams) -> dict[str, BaseModel]:
    """Each stage's parameters for this board; ``ValueError`` for samples larger than the array and single
    write events beyond the limits, before anything is measured."""
    info = board.info
    n_all = info.rows * info.cols
    if params.sample is not None and params.sample > n_all:
        raise ValueError(f"--sample {params.sample} is larger than the {info.rows}x{info.cols} array "
                         f"({n_all} devices)")
    sp = params.stage_params(n_all)
    for name, p in sp.items():
        n = getattr(p, "n_devices", None)
        if n is not None and n > n_all:
            raise ValueError(f"the {name} sample of {n} devices is larger than the {info.rows}x{info.cols} array "
                             f"({n_all} devices); pass a smaller sample")
    for stage in REGISTRY:
        if stage.single_event is not None:
            what, n = stage.single_event(sp[stage.name])
            check_event_pulses(n, board.limits, what)  # single write events; the other stages split theirs
    return sp


def _apply_profiles(board: Board, params: CalibrationParams) -> tuple[PulseProfile, PulseProfile]:
    """Set the requested profiles and refuse, before measuring anything, any that breaks the limits."""
    if params.set_profile is not None or params.reset_profile is not None:
        board.set_profiles(params.set_profile or board.profiles[0], params.reset_profile or board.profiles[1])
    set_p, reset_p = board.profiles
    check_profile(set_p, +1, board.limits)
    check_profile(reset_p, -1, board.limits)
    return set_p, reset_p


def _restore_snapshot(board: Board, store: RawStore, done: list[str]) -> None:
    """On a board that can snapshot its state, go back to the state saved with the last completed stage."""
    if done and board.info.capabilities.snapshot:
        blob = store.board_snapshot()
        if blob is not None:
            board.restore(blob)  # the board sends our profiles again before its next pulse


def _complete_stage(run: _Run, stage: Stage, units: float) -> None:
    """Read ``stage`` back from the file if an earlier run completed it; measure and save it otherwise."""
    name = stage.name
    if name in run.done_before:
        res_json, raw, stamp = run.store.load_stage(name)
        run.results[name], run.raws[name] = stage.result_model.model_validate(res_json), raw
        run.stamps[name] = {"resumed": True, **(stamp or {})}
        if run.tick:
            run.tick(units)
        return
    if stage.responsive_only and STUCK in run.raws and run.params.sample is None:
        run.stage_params = _fit_samples_to_responsive(run.stage_params, run.raws[STUCK], run.n_all)
    p = run.stage_params[name]
    watch = Stopwatch(run.board)
    ticker = _StageTicker(run.tick) if run.tick else None
    measured = stage.measure(run.board, p, Earlier(run.results, run.raws), ticker)
    if ticker:
        ticker.finish(units)
    stamp = watch.stamp()
    _check_datasets(stage, measured.raw)
    snapshot = run.board.snapshot() if run.board.info.capabilities.snapshot else None
    run.store.write_stage(name, measured.result, measured.raw, p, stamp, board_snapshot=snapshot)
    run.results[name], run.raws[name] = measured.result, measured.raw
    run.stamps[name] = stamp.model_dump()
    log.info("stage %s done in %.1f s", name, stamp.wall_duration_sec)


def _check_datasets(stage: Stage, raw: Raw) -> None:
    """The arrays a stage measured are the datasets its registry entry declares (the file layout)."""
    if set(raw.arrays) != set(stage.datasets):
        got, declared = set(raw.arrays), set(stage.datasets)
        raise RuntimeError(f"stage {stage.name} measured arrays {sorted(got - declared)} it does not declare and "
                           f"lacks {sorted(declared - got)}; update its entry in calibration.stages.REGISTRY")


def _fit_samples_to_responsive(sp: dict[str, BaseModel], stuck_raw: Raw, n_all: int) -> dict[str, BaseModel]:
    """Shrink the default samples of the stages drawn from responsive devices to those the stuck map found.

    Raises ``ValueError`` naming what the stuck map saw when too few devices respond to calibrate.
    """
    n_resp = int(np.count_nonzero(~np.asarray(stuck_raw["stuck"], bool)))
    out = dict(sp)
    for stage in REGISTRY:
        if not stage.responsive_only:
            continue
        p, floor = sp[stage.name], stage.min_devices()
        if n_resp < floor:
            raise ValueError(f"cannot calibrate: the stuck map found {n_all - n_resp} of {n_all} devices stuck "
                             f"({100 * (n_all - n_resp) / n_all:.1f} %); only {n_resp} respond to the pulses, and the "
                             f"{stage.name} stage needs at least {floor}. Check the pulse profiles and the array")
        if p.n_devices > n_resp:
            log.warning("%s: sample reduced from %d to the %d responsive devices", stage.name, p.n_devices, n_resp)
            out[stage.name] = p.model_copy(update={"n_devices": n_resp})
    return out


def _store_pulses_per_device(run: _Run, report: CalibrationReport) -> None:
    info = run.board.info
    pulses = pulses_per_device(info.rows, info.cols, run.stage_params, run.results, run.raws)
    run.store.write_array("pulses_per_device", pulses, "pulses",
                          "pulses each device received from this calibration (write-verify pulses excluded)")
    report.sample["pulses_per_device_map"] = "/pulses_per_device"
    report.sample["pulses_per_device_max"] = int(pulses.max())
    report.sample["devices_pulsed"] = int(np.count_nonzero(pulses))


def pulses_per_device(rows: int, cols: int, sp: dict, results: dict, raws: dict) -> np.ndarray:
    """(rows, cols) map of the pulses each device received in the stages (write-verify not counted:
    the board reports only its total, given in each stage's sample description)."""
    total = np.zeros(rows * cols, dtype=np.int64)
    for stage in REGISTRY:
        if stage.name in raws:
            total += stage.pulses(sp[stage.name], raws[stage.name], rows * cols)
    return total.reshape(rows, cols)


def write_plots(out: Path, results: dict, raws: dict, report: CalibrationReport | None = None) -> list[Path]:
    """The calibration's PNGs (whatever stages are present)."""
    return [BY_NAME[name].plot(out, results[name], raws[name], report)
            for name in STAGES if name in results and BY_NAME[name].plot is not None]
