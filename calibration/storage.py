"""Raw measurements in HDF5: one group per stage, each stage saved as soon as it ends.

Layout of a calibration file (``calibration.h5``)::

    /                       attrs: board_identity (JSON), board_info (JSON), params (JSON),
                                   instrument_settings (JSON: ``Board.settings_snapshot()``),
                                   created (wall time), software
    /stages/<name>/         attrs: complete (bool, written last), params (JSON),
                                   result (JSON), stamp (JSON: board-clock and wall times),
                                   plus the stage's own attributes
    /stages/<name>/<array>  attrs: units
    /board_snapshot         emulator only: the board's state when the last saved stage ended

Every write makes a new file (a copy of the previous one plus the new stage) and
renames it over the old one (:func:`calibration.atomic_files.atomic_h5`), so
whatever ended before an interruption (Ctrl-C, a kill, a lost link, a full disk)
is on disk in a complete file, and a resumed run finds the completed stages
there.  On a board that can snapshot its state (the emulator), the snapshot saved
with the last stage lets a resumed run continue from exactly that state.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from pydantic import BaseModel

from calibration.atomic_files import atomic_h5
from calibration.common import Raw, Stamp, now_iso
from protocols.version import software_version

log = logging.getLogger(__name__)

SOFTWARE = "memristor-hil calibration"  # with software_version beside it


class ResumeRefused(ValueError):
    """A resumed run does not match the data already on disk."""


class AlreadyMeasured(ResumeRefused):
    """A new calibration was asked for in a directory that holds one (resume it, or choose another)."""


IDENTITY_KEYS = ("kind", "name", "serial_number", "firmware_version", "protocol_version", "rows", "cols", "emulated")


def identity_from_info(info: dict) -> dict:
    """The identity part of a board's info (``BoardInfo.model_dump()``): what must match for data to be combined.

    The address is not part of it: a board reached at another port (a USB adapter that
    came back as another device, an emulator served on a new TCP port) is the same board.
    An emulator's serial number carries its seed and, if not the defaults, its device
    parameters, so two emulators of other seeds or presets are different boards.
    """
    return {k: info.get(k) for k in IDENTITY_KEYS}


def board_identity(board) -> dict:
    """The identity of an open board (see :func:`identity_from_info`)."""
    return identity_from_info(board.info.model_dump(mode="json"))


def describe_identity(identity: dict) -> str:
    """One line naming a board, e.g. ``emulator EMU-32x48-seed3 (32x48, firmware emu-1.0.0)``."""
    return (f"{identity.get('kind')} {identity.get('serial_number')} "
            f"({identity.get('rows')}x{identity.get('cols')}, firmware {identity.get('firmware_version')})")


def identity_difference(old: dict, new: dict) -> str:
    """``kind 'a' != 'b', ...`` for the identity fields that differ (empty if none)."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k} {old.get(k)!r} != {new.get(k)!r}" for k in keys)


def _attr_value(value: Any) -> Any:
    if isinstance(value, (str, bool, int, float, np.integer, np.floating)):
        return value
    return json.dumps(value, default=str)


class RawStore:
    """An HDF5 file of raw measurements (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ---- file level -----------------------------------------------------------------
    def start(self, identity: dict, info: dict, params: dict, resume: bool, extra: dict | None = None,
              upgrade_params: Callable[[dict], dict] | None = None) -> list[str]:
        """Create the file, or (``resume``) check it matches; returns the completed stages.

        ``upgrade_params`` brings parameters stored by an older version to today's names before they are
        compared with ``params``."""
        if self.path.exists():
            if not resume:
                raise AlreadyMeasured(
                    f"{self.path} already holds measurements; continue that calibration with --resume "
                    "(resume=True), or choose another output directory")
            try:
                with h5py.File(self.path, "r") as f:
                    old_id = json.loads(f.attrs["board_identity"])
                    old_params = json.loads(f.attrs["params"])
            except (OSError, KeyError, ValueError) as exc:
                # not a file this module completed (written before writes were atomic): nothing in it can be trusted
                aside = self.path.with_name(self.path.name + ".damaged")
                self.path.replace(aside)
                log.warning("%s is unreadable (%s); moved aside to %s, calibrating from the start",
                            self.path, exc, aside)
                return self._create(identity, info, params, extra)
            if upgrade_params is not None:
                old_params = upgrade_params(old_params)
            if old_id != identity:
                raise ResumeRefused(
                    f"cannot resume: {self.path} was measured on another board, {describe_identity(old_id)}; this "
                    f"address reaches {describe_identity(identity)} ({identity_difference(old_id, identity)}); "
                    "resume with --board pointing at the original board, or calibrate into another directory")
            if old_params != params:
                keys = sorted(k for k in set(old_params) | set(params) if old_params.get(k) != params.get(k))
                raise ResumeRefused(
                    f"cannot resume: the calibration parameters differ from those of {self.path} "
                    f"(changed: {', '.join(keys)}); rerun with the original parameters or another output directory")
            return self.completed()
        return self._create(identity, info, params, extra)

    def _create(self, identity: dict, info: dict, params: dict, extra: dict | None) -> list[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_h5(self.path, update=False) as f:
            f.attrs["board_identity"] = json.dumps(identity, sort_keys=True)
            f.attrs["board_info"] = json.dumps(info, sort_keys=True, default=str)
            f.attrs["params"] = json.dumps(params, sort_keys=True)
            f.attrs["created"] = now_iso()
            f.attrs["software"] = SOFTWARE
            f.attrs["software_version"] = software_version()
            for k, v in (extra or {}).items():
                f.attrs[k] = _attr_value(v)
            f.create_group("stages")
        return []

    def completed(self) -> list[str]:
        if not self.path.exists():
            return []
        with h5py.File(self.path, "r") as f:
            stages = f.get("stages")
            if stages is None:
                return []
            return [name for name, g in stages.items() if bool(g.attrs.get("complete", False))]

    # ---- stages ---------------------------------------------------------------------
    def write_stage(self, name: str, result: BaseModel, raw: Raw, params: BaseModel | dict | None,
                    stamp: Stamp | None, board_snapshot: bytes | None = None) -> None:
        """Save a finished stage (and the board's state after it, if it can be snapshot) in one atomic write."""
        with atomic_h5(self.path, update=True) as f:
            stages = f.require_group("stages")
            if name in stages:
                del stages[name]
            g = stages.create_group(name)
            for key, arr in raw.arrays.items():
                a = np.asarray(arr)
                ds = g.create_dataset(key, data=a, compression="gzip" if a.size > 4096 else None)
                ds.attrs["units"] = raw.units.get(key, "")
            for k, v in raw.attrs.items():
                g.attrs[k] = _attr_value(v)
            if params is not None:
                g.attrs["params"] = params.model_dump_json() if isinstance(params, BaseModel) else json.dumps(params)
            g.attrs["result"] = result.model_dump_json()
            if stamp is not None:
                g.attrs["stamp"] = stamp.model_dump_json()
            if board_snapshot is not None:
                if "board_snapshot" in f:
                    del f["board_snapshot"]
                f.create_dataset("board_snapshot", data=np.frombuffer(board_snapshot, dtype=np.uint8))
                f["board_snapshot"].attrs["stage"] = name
            g.attrs["complete"] = True

    def board_snapshot(self) -> bytes | None:
        """The board state saved with the last completed stage (emulator only), or None."""
        with h5py.File(self.path, "r") as f:
            return f["board_snapshot"][()].tobytes() if "board_snapshot" in f else None

    def write_array(self, name: str, value: np.ndarray, unit: str, description: str = "") -> None:
        """A dataset at the file's root (summaries over stages), replaced if present."""
        with atomic_h5(self.path, update=True) as f:
            if name in f:
                del f[name]
            ds = f.create_dataset(name, data=np.asarray(value), compression="gzip")
            ds.attrs["units"] = unit
            if description:
                ds.attrs["description"] = description

    def load_stage(self, name: str) -> tuple[dict, Raw, dict | None]:
        """(result JSON, raw arrays, stamp) of a completed stage."""
        with h5py.File(self.path, "r") as f:
            g = f["stages"][name]
            raw = Raw()
            for key, ds in g.items():
                raw.add(key, ds[()], ds.attrs.get("units", ""))
            result = json.loads(g.attrs["result"])
            stamp = json.loads(g.attrs["stamp"]) if "stamp" in g.attrs else None
            return result, raw, stamp


def save_measurement(path: str | Path, name: str, result: BaseModel, raw: Raw, params: BaseModel | None,
                     stamp: Stamp | None, board_info: dict, identity: dict, settings: dict | None = None) -> Path:
    """One characterization measurement in its own HDF5 file (overwritten); ``settings``: the board's
    settings snapshot, stored as the ``instrument_settings`` attribute."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_h5(path, update=False) as f:
        f.attrs["board_identity"] = json.dumps(identity, sort_keys=True)
        f.attrs["board_info"] = json.dumps(board_info, sort_keys=True, default=str)
        if settings is not None:
            f.attrs["instrument_settings"] = json.dumps(settings, sort_keys=True, default=str)
        f.attrs["created"] = now_iso()
        f.attrs["software"] = SOFTWARE
        f.attrs["software_version"] = software_version()
        f.create_group("stages")
    RawStore(path).write_stage(name, result, raw, params, stamp)
    return path
