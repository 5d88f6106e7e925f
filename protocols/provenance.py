"""Which code produced a result: a fingerprint of the stack's own sources, recorded beside ``software_version``.

``software_version`` is the installed release (never bumped between edits), so it cannot tell two
states of the code apart.  :func:`source_fingerprint` can: a sha256 over the files of our packages
(``.py`` sources and the ``.toml``/``.yaml`` package data such as the device presets), each as its path
relative to the packages' parent folder and its contents, sorted by that path; the first 12 hex digits.
Packages are found where Python imports them from, so an editable install (the working tree) and a
regular ``pip install .`` (site-packages) of the same sources give the same fingerprint; timestamps,
``__pycache__`` and files outside the packages (tests, docs) play no part.

Two scopes (docs/DESIGN.md, "Code provenance"):

- :data:`ALL_PACKAGES` -- what a training run, a demo or a sweep runs: recorded as ``source_fingerprint``
  in every JSON file of a run directory (``config.json``, ``checkpoint.json``, ``summary.json``, ...).
- :data:`CALIBRATION_PACKAGES` -- the packages below ``hil``, all a calibration can run (the layering
  keeps ``hil`` out of it): recorded as ``source_fingerprint`` in ``calibration.json``, so a change of the
  training code alone leaves a calibration current.

Each scope is computed once per process.  :func:`source_git` adds the git commit and whether the
packages differ from it, when the sources are a git checkout and ``git`` answers quickly; it is for
people only (nothing decides on it) and never fails.

It lives in the lowest layer so that every package can stamp what it writes; it reads files and never
imports the packages it fingerprints.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import subprocess
from pathlib import Path

ALL_PACKAGES = ("calibration", "drivers", "firmware_stub", "hil", "protocols")
CALIBRATION_PACKAGES = ("calibration", "drivers", "firmware_stub", "protocols")
SUFFIXES = (".py", ".toml", ".yaml")
FINGERPRINT_HEX = 12
UNKNOWN = "unknown"
"""How a missing fingerprint (a file written before fingerprints were recorded) is shown."""


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # a top-level package: found, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _files(packages: tuple[str, ...]) -> list[tuple[str, Path]]:
    out = []
    for name in packages:
        root = _package_dir(name)
        if root is None:
            continue
        for path in root.rglob("*"):
            if path.suffix in SUFFIXES and path.is_file() and "__pycache__" not in path.parts:
                out.append(((Path(name) / path.relative_to(root)).as_posix(), path))
    return sorted(out)


@functools.lru_cache(maxsize=None)
def source_fingerprint(packages: tuple[str, ...] = ALL_PACKAGES) -> str:
    """Short hex digest of the sources of ``packages`` as this process imports them (cached)."""
    digest = hashlib.sha256()
    for rel, path in _files(tuple(sorted(packages))):
        data = path.read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:FINGERPRINT_HEX]


def calibration_fingerprint() -> str:
    """:func:`source_fingerprint` of what a calibration runs (:data:`CALIBRATION_PACKAGES`)."""
    return source_fingerprint(CALIBRATION_PACKAGES)


@functools.lru_cache(maxsize=1)
def source_git() -> dict | None:
    """``{"commit": sha, "dirty": bool}`` of the checkout holding the packages (dirty: they differ from the
    commit); None when they are not in a git checkout or git is missing or slow."""
    root = _package_dir("hil")
    if root is None or not any((p / ".git").exists() for p in (root.parent, *root.parent.parents)):
        return None
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(root.parent), *args], capture_output=True, text=True,
                                  timeout=5, check=True).stdout.strip()

        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", *ALL_PACKAGES))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def shown(fingerprint: str | None) -> str:
    """A recorded fingerprint for people: :data:`UNKNOWN` when none was recorded."""
    return fingerprint or UNKNOWN
