"""Unit suffixes in names: siemens ``_s``, seconds ``_sec`` (docs/DESIGN.md, "Units and indices in names").

Before issue 12 a time in seconds was written ``_s`` as well.  Two things still hold those
older names, and this module translates them at their boundary:

* the wire.  Protocol version 3 spells the seconds keys of its JSON payloads (HELLO's limits
  and timing resolution, the emulator's parameters and totals, a snapshot's clock) ``_s``:
  :func:`to_wire` and :func:`from_wire` (called by ``encode_json``/``decode_json``) rename them,
  so the bytes on the line did not change with the rename (``tests/test_wire_golden.py``);
* files written before the rename: a limits, bench or device TOML, ``calibration.json`` and a
  calibration's stored parameters, a run's ``config.json``, a sweep spec and a sweep's state.
  The models that read them take an older ``<stem>_s`` for ``<stem>_sec``
  (:class:`AcceptsOldSecondNames`, :func:`upgrade_old_names`).

A ``<stem>_s`` is read as seconds only for a stem of :data:`SECONDS_STEMS`, the names that
were seconds then; every other ``_s`` is siemens, as it always was.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator

SECONDS_STEMS = frozenset({
    # the emulator's physics and the firmware's timing
    "clock", "dt", "duration", "write_batch_duration", "width", "widths", "set_width", "reset_width",
    "profile_width", "width_nominal", "last_width", "last_pulse_width", "min_pulse_width", "max_pulse_width",
    "timing_resolution", "byte_time", "relax_t0", "t0", "drift_t0", "t_max", "t_command", "t_link_turnaround",
    "t_pulse_gap", "t_read_row", "t_read", "t_vmm", "integration", "dwell", "period", "min_period", "edge_time",
    "times", "drift_delay",
    # host, link and run timing
    "timeout", "open_timeout", "extra", "wait", "idle", "poll", "turnaround", "round_trip", "host_step",
    "board_clock_start", "board_clock_end", "wall_duration", "started", "ended", "chosen",
})
"""Stems whose ``<stem>_s`` meant seconds before the rename (now ``<stem>_sec``)."""


NAME_LISTS = frozenset({"derived_keys"})
"""Keys whose value is a list of key names (the emulator's truth): its items are renamed too."""


def _rename(obj: Any, rename) -> Any:
    if isinstance(obj, dict):
        return {rename(k) if isinstance(k, str) else k:
                [rename(x) if isinstance(x, str) else x for x in v] if k in NAME_LISTS and isinstance(v, list)
                else _rename(v, rename) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rename(v, rename) for v in obj]
    return obj


def _old(key: str) -> str:
    return key[:-4] + "_s" if key.endswith("_sec") and key[:-4] in SECONDS_STEMS else key


def _new(key: str) -> str:
    return key[:-2] + "_sec" if key.endswith("_s") and key[:-2] in SECONDS_STEMS else key


def old_name(name: str) -> str:
    """The name a seconds ``name`` had before the rename (``<stem>_sec`` -> ``<stem>_s``); others unchanged."""
    head, dot, last = name.rpartition(".")
    return head + dot + _old(last)


def new_name(name: str) -> str:
    """Today's name of ``name`` (``<stem>_s`` of :data:`SECONDS_STEMS` -> ``<stem>_sec``, also after a dotted
    prefix such as ``device.``); others unchanged."""
    head, dot, last = name.rpartition(".")
    return head + dot + _new(last)


def to_wire(obj: Any) -> Any:
    """``obj`` with its seconds keys (at any depth) spelt as protocol version 3 spells them."""
    return _rename(obj, _old)


def from_wire(obj: Any) -> Any:
    """``obj`` with the seconds keys of protocol version 3 (at any depth) in today's names."""
    return _rename(obj, _new)


upgrade_old_names = from_wire
"""A mapping read from a file written before the rename, with today's names (at any depth)."""


class AcceptsOldSecondNames(BaseModel):
    """A model that reads files: ``<stem>_sec`` is also taken from ``<stem>_s``, the name before the rename (at any
    depth: in the model's dict fields too)."""

    @model_validator(mode="before")
    @classmethod
    def _old_second_names(cls, data: Any) -> Any:
        return upgrade_old_names(data) if isinstance(data, dict) else data
