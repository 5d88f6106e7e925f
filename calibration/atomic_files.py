"""Files that are never seen half-written: write a temporary file, fsync it, rename it, fsync the directory.

Every file a later step relies on (a run's configuration, checkpoints and summary,
a calibration's report and raw HDF5 data) goes through these helpers, so a kill,
a lost link or a full disk at any instant leaves either the previous complete
file or the new complete one, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def temp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path) -> None:
    """Make the complete file ``tmp`` durable and move it to ``path`` in one step."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)  # the rename itself must be durable before anything relies on it


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"cannot write {type(o).__name__} to JSON")


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=json_default) + "\n").encode())


@contextlib.contextmanager
def atomic_h5(path: Path, update: bool) -> Iterator:
    """An HDF5 file to write, replacing ``path`` only once it is complete and closed.

    With ``update`` the new file starts as a copy of ``path`` (an incremental write);
    otherwise it starts empty.  An exception inside the block (Ctrl-C, a full disk)
    leaves ``path`` exactly as it was.
    """
    import h5py

    path = Path(path)
    tmp = temp_path(path)
    try:
        if update:
            shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a" if update else "w") as f:
            yield f
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
