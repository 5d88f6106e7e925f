"""Files that are never seen half-written: write a temporary file, fsync it, rename it, fsync the directory.

Every file a later step relies on (a run's configuration, checkpoints and summary,
a calibration's report and raw HDF5 data) goes through these helpers, so a kill,
a lost link or a full disk at any instant leaves either the previous complete
file or the new complete one, never a torn one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
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
    """An HDF5 file to write, replacing ``path`` only once it is complete.

    The file is built in memory (with ``update``, from the bytes of ``path``: an
    incremental write) and then written with :func:`atomic_write_bytes`, so the HDF5
    library never writes to disk itself: a full disk is a plain ``OSError`` from that
    write, and an exception inside the block (Ctrl-C) leaves ``path`` exactly as it was.
    """
    import h5py

    path = Path(path)
    buf = io.BytesIO(path.read_bytes() if update else b"")
    with h5py.File(buf, "r+" if update else "w") as f:
        yield f
    atomic_write_bytes(path, buf.getvalue())
