"""The run directory: configuration, board identity, metrics stream, checkpoints, summary.

Layout (ARCHITECTURE.md): ``config.json``, ``board.json``, ``calibration.json``,
``metrics.jsonl`` (one JSON object per line, flushed as written), ``checkpoint.npz``
+ ``checkpoint.json`` (everything needed to resume exactly), ``summary.json`` and
PNG plots.  Every JSON object written here records ``software_version`` (the stack's
version that wrote it) and ``source_fingerprint`` (the code that wrote it, :mod:`protocols.provenance`);
a copied file keeps what it already names (a copy of a file that predates fingerprints: null, unknown).  Files that
must never be seen half-written are replaced atomically
(:mod:`calibration.atomic_files`: temporary file, fsync, rename, fsync of the directory).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from calibration.atomic_files import atomic_write_bytes, atomic_write_json
from calibration.atomic_files import json_default as _json_default
from protocols import provenance
from protocols.unit_names import upgrade_old_names
from protocols.version import software_version

STAMPS = ("software_version", "source_fingerprint")


def with_version(obj: Any) -> Any:
    """``obj`` with ``software_version`` and ``source_fingerprint`` first (each kept when ``obj`` has the key
    already: a copied file); non-dicts as given."""
    if not isinstance(obj, dict):
        return obj
    fingerprint = obj["source_fingerprint"] if "source_fingerprint" in obj else provenance.source_fingerprint()
    return {"software_version": obj.get("software_version") or software_version(),
            "source_fingerprint": fingerprint, **{k: v for k, v in obj.items() if k not in STAMPS}}


def without_version(obj: dict) -> dict:
    """A JSON object as written by :meth:`RunStore.write_json`, minus its stamps (:data:`STAMPS`)."""
    return {k: v for k, v in obj.items() if k not in STAMPS}


class RunStore:
    def __init__(self, root: str | Path, on_log: Callable[[dict], None] | None = None):
        """``on_log``: called with each record :meth:`log` writes, once it is written and flushed."""
        self.root = Path(root)
        self.on_log = on_log
        self._metrics = None

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.root / name, with_version(obj))

    def read_json(self, name: str) -> Any:
        return upgrade_old_names(json.loads((self.root / name).read_text()))  # older runs: seconds were _s

    # ---- metrics stream -------------------------------------------------------------------
    def open_metrics(self, keep_while=None) -> None:
        """Open metrics.jsonl for appending; with ``keep_while`` first drop lines it rejects
        (the lines logged after the checkpoint a resumed run restarts from)."""
        path = self.root / "metrics.jsonl"
        if keep_while is not None and path.exists():
            kept = []
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
                if keep_while(rec):
                    kept.append(line)
            atomic_write_bytes(path, ("\n".join(kept) + "\n" if kept else "").encode())
        self._metrics = open(path, "a", buffering=1)

    def log(self, record: dict) -> None:
        self._metrics.write(json.dumps(record, default=_json_default) + "\n")
        self._metrics.flush()
        if self.on_log is not None:
            self.on_log(record)

    def read_metrics(self) -> list[dict]:
        path = self.root / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        if self._metrics:
            self._metrics.close()
            self._metrics = None

    # ---- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, meta: dict, arrays: dict[str, np.ndarray], blob: bytes | None) -> None:
        """Arrays (and an optional board snapshot) first, then the JSON that names them: a kill
        between the two leaves the previous checkpoint's JSON pointing at a consistent pair."""
        gen = int(meta["generation"])
        buf = io.BytesIO()
        extra = {"board_snapshot": np.frombuffer(blob, dtype=np.uint8)} if blob is not None else {}
        np.savez(buf, **arrays, **extra)
        name = f"checkpoint.{gen % 2}.npz"
        atomic_write_bytes(self.root / name, buf.getvalue())
        atomic_write_json(self.root / "checkpoint.json", with_version({**meta, "arrays_file": name}))

    def load_checkpoint(self) -> tuple[dict, dict[str, np.ndarray], bytes | None]:
        try:
            meta = self.read_json("checkpoint.json")
            path = self.root / meta["arrays_file"]
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files if k != "board_snapshot"}
                blob = data["board_snapshot"].tobytes() if "board_snapshot" in data.files else None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise ValueError(f"the checkpoint in {self.root} is damaged ({type(exc).__name__}: {exc}); "
                             "the run cannot be resumed from it") from None
        return meta, arrays, blob
