"""The installed version of this stack, recorded in every run, calibration and report it writes.

It lives in the lowest layer so that every package can stamp what it writes (docs/DESIGN.md, Layers)."""

from __future__ import annotations

from importlib import metadata


def software_version() -> str:
    """``memristor-hil`` version as installed (``"unknown"`` when run from a tree that was never installed)."""
    try:
        return metadata.version("memristor-hil")
    except metadata.PackageNotFoundError:
        return "unknown"
