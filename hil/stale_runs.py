"""Parts of a demo or a sweep made by other code than this process's: found, and set aside to be made again.

A resumed ``hil demo`` or ``hil sweep`` keeps what has finished.  A part whose recorded
``source_fingerprint`` (:mod:`protocols.provenance`) is not this code's -- or is unknown, a file written
before fingerprints were recorded -- is *stale*: kept, its figures would sit in one table with figures of
this code.  By default each stale part is moved to ``ROOT/superseded/FINGERPRINT/<its path under ROOT>``
(nothing is deleted) and made again; ``--keep-stale`` keeps them knowingly, and ``hil compare`` then says
the table mixes code versions.  What counts (docs/DESIGN.md, "Code provenance"):

- a finished run: its ``summary.json`` (and the code of any checkpoint it was resumed from under other
  code, ``earlier_source_fingerprints``);
- an interrupted run: the code of its checkpoint (without one it starts again from the beginning anyway);
- a finished calibration: its ``calibration.json``, against the fingerprint of the packages a calibration
  runs (a change of the training code alone leaves it current); the runs trained on a calibration that is
  made again are made again too.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from protocols import provenance

SUPERSEDED = "superseded"


@dataclass(frozen=True)
class Stale:
    path: Path
    recorded: str  # the fingerprint on record, or provenance.UNKNOWN
    finished: bool


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stale_run(run_dir: Path) -> Stale | None:
    """The run in ``run_dir`` if it is stale (finished, or interrupted after a checkpoint); else None."""
    current = provenance.source_fingerprint()
    summary = _read(run_dir / "summary.json")
    if summary is not None:
        codes = [summary.get("source_fingerprint"), *summary.get("earlier_source_fingerprints", [])]
        odd = next((c for c in codes if c != current), current)
        return None if odd == current else Stale(run_dir, provenance.shown(odd), True)
    checkpoint = _read(run_dir / "checkpoint.json")
    if checkpoint is None or checkpoint.get("source_fingerprint") == current:
        return None
    return Stale(run_dir, provenance.shown(checkpoint.get("source_fingerprint")), False)


def stale_point(run_dir: Path, calibration_remade_by: str | None) -> Stale | None:
    """:func:`stale_run`, or -- when the calibration the run trained on is made again (``calibration_remade_by``:
    the code that had made it) -- the run too, if it has started."""
    stale = stale_run(run_dir)
    if stale is None and calibration_remade_by is not None and run_dir.exists():
        stale = Stale(run_dir, calibration_remade_by, (run_dir / "summary.json").is_file())
    return stale


def stale_calibration(cal_dir: Path) -> Stale | None:
    """The finished calibration in ``cal_dir`` if a calibration by this code would not be the same code's."""
    report = _read(cal_dir / "calibration.json")
    if report is None or report.get("source_fingerprint") == provenance.calibration_fingerprint():
        return None
    return Stale(cal_dir, provenance.shown(report.get("source_fingerprint")), True)


def set_aside(stale: Stale, root: Path) -> Path:
    """Move the stale folder to ``root/superseded/FINGERPRINT/...`` (a new name if that is taken); the new path."""
    target = root / SUPERSEDED / stale.recorded / stale.path.resolve().relative_to(root.resolve())
    n = 1
    while target.exists():
        n += 1
        target = target.with_name(f"{target.name.split('~')[0]}~{n}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(stale.path), str(target))
    return target


def summary_line(stales: list[Stale], finished: int, keep: bool, root: Path, what: str = "parts") -> str:
    """One line for the user: how many finished ``what`` were stale, made by which code, and what happens."""
    codes = Counter(s.recorded for s in stales)
    made_by = ", ".join(f"{code} ({n})" for code, n in sorted(codes.items()))
    done = sum(s.finished for s in stales)
    interrupted = len(stales) - done
    count = f"{done} of {finished} finished {what}" + (f" and {interrupted} interrupted" if interrupted else "")
    head = f"{count} were made by other code (source {made_by}) than this ({provenance.source_fingerprint()})"
    if keep:
        return f"{head}; kept (--keep-stale): the comparison mixes code versions"
    return f"{head}; set aside in {root / SUPERSEDED} and made again (--keep-stale keeps them)"
