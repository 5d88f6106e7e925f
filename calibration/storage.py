"""Raw measurements in HDF5: one group per stage, written and flushed as soon as it ends.

Layout of a calibration file (``calibration.h5``)::

    /                       attrs: board_identity (JSON), board_info (JSON), params (JSON),
                                   instrument_settings (JSON: ``Board.settings_snapshot()``),
                                   created (wall time), software
    /stages/<name>/         attrs: complete (bool, written last), params (JSON),
                                   result (JSON), stamp (JSON: board-clock and wall times),
                                   plus the stage's own attributes
    /stages/<name>/<array>  attrs: units

The file is opened, written and closed for each stage, so whatever ended before
an interruption (Ctrl-C, a lost link, a refused request) is on disk, and a
resumed run finds the completed stages there.  A stage group without
``complete = True`` is an interrupted write and is replaced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from pydantic import BaseModel

from calibration.common import Raw, Stamp, now_iso

SOFTWARE = "memristor-hil calibration"


class ResumeRefused(ValueError):
    """A resumed run does not match the data already on disk."""


def board_identity(board) -> dict:
    """What must match for data to be combined: the board's identity and geometry."""
    i = board.info
    return {"kind": i.kind, "name": i.name, "serial_number": i.serial_number,
            "firmware_version": i.firmware_version, "protocol_version": i.protocol_version,
            "rows": i.rows, "cols": i.cols, "emulated": i.emulated}


def _attr_value(value: Any) -> Any:
    if isinstance(value, (str, bool, int, float, np.integer, np.floating)):
        return value
    return json.dumps(value, default=str)


class RawStore:
    """An HDF5 file of raw measurements (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ---- file level -----------------------------------------------------------------
    def start(self, identity: dict, info: dict, params: dict, resume: bool, extra: dict | None = None) -> list[str]:
        """Create the file, or (``resume``) check it matches; returns the completed stages."""
        if self.path.exists():
            if not resume:
                raise ResumeRefused(
                    f"{self.path} already holds measurements; pass --resume (resume=True) to continue that "
                    "calibration, or choose another output directory")
            with h5py.File(self.path, "r") as f:
                old_id = json.loads(f.attrs.get("board_identity", "{}"))
                old_params = json.loads(f.attrs.get("params", "{}"))
            if old_id != identity:
                diff = {k: (old_id.get(k), identity.get(k)) for k in set(old_id) | set(identity)
                        if old_id.get(k) != identity.get(k)}
                raise ResumeRefused(
                    f"cannot resume: {self.path} was measured on another board "
                    + ", ".join(f"{k} {a!r} != {b!r}" for k, (a, b) in sorted(diff.items())))
            if old_params != params:
                keys = sorted(k for k in set(old_params) | set(params) if old_params.get(k) != params.get(k))
                raise ResumeRefused(
                    f"cannot resume: the calibration parameters differ from those of {self.path} "
                    f"(changed: {', '.join(keys)}); rerun with the original parameters or another output directory")
            return self.completed()
        if resume:
            pass  # nothing to resume: start afresh
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(self.path, "w") as f:
            f.attrs["board_identity"] = json.dumps(identity, sort_keys=True)
            f.attrs["board_info"] = json.dumps(info, sort_keys=True, default=str)
            f.attrs["params"] = json.dumps(params, sort_keys=True)
            f.attrs["created"] = now_iso()
            f.attrs["software"] = SOFTWARE
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
                    stamp: Stamp | None) -> None:
        with h5py.File(self.path, "a") as f:
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
            f.flush()
            g.attrs["complete"] = True
            f.flush()

    def write_array(self, name: str, value: np.ndarray, unit: str, description: str = "") -> None:
        """A dataset at the file's root (summaries over stages), replaced if present."""
        with h5py.File(self.path, "a") as f:
            if name in f:
                del f[name]
            ds = f.create_dataset(name, data=np.asarray(value), compression="gzip")
            ds.attrs["units"] = unit
            if description:
                ds.attrs["description"] = description
            f.flush()

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
    with h5py.File(path, "w") as f:
        f.attrs["board_identity"] = json.dumps(identity, sort_keys=True)
        f.attrs["board_info"] = json.dumps(board_info, sort_keys=True, default=str)
        if settings is not None:
            f.attrs["instrument_settings"] = json.dumps(settings, sort_keys=True, default=str)
        f.attrs["created"] = now_iso()
        f.attrs["software"] = SOFTWARE
        f.create_group("stages")
    RawStore(path).write_stage(name, result, raw, params, stamp)
    return path
