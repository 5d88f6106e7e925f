"""A run's running figures (:class:`Totals`) and the host state a checkpoint holds, as named arrays.

Array names are fixed (``b<k>``, ``layer<k>.<name>``, ``opt.<name>[.<i>]``, ``rule<k>.<name>``
with ``k`` counting the analog layers): run folders written by earlier versions still resume.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from drivers.board import Board
from hil.model import MLP
from hil.optim import Optimizer


@dataclass
class Totals:
    """Running figures of a run, checkpointed with it."""

    steps: int = 0
    pulses: int = 0
    devices_written: int = 0
    write_fraction_sum: float = 0.0
    write_fraction_per_weight_sum: float = 0.0
    saturated: int = 0
    rebalance_pulses: int = 0
    rebalance_pairs: int = 0
    scheduled_reads: int = 0
    write_ahead_reads: int = 0  # of them: cells read before a batch for a resume's read-back (no durable tags)
    wire_bytes: int = 0
    wall_s: float = 0.0
    program_energy_j: float = 0.0
    program_pulses: int = 0
    baseline: dict = field(default_factory=dict)
    run_nonce: int = 0  # high half of every pulse tag: tags of another run never look like ours
    # the code that wrote the checkpoints a run was resumed from under other code (--allow-code-change), in order
    earlier_source_fingerprints: list = field(default_factory=list)

    def add_step(self, step: int, counts) -> None:
        """Count step ``step``'s plan (a :class:`~hil.training.plan.StepCounts`)."""
        self.steps = step + 1
        self.pulses += counts.pulses
        self.devices_written += counts.devices_written
        self.write_fraction_sum += counts.write_fraction
        self.write_fraction_per_weight_sum += counts.write_fraction_per_weight
        self.saturated += counts.saturated_pairs

    def count_reads(self, cells: int, write_ahead: bool = False) -> None:
        self.scheduled_reads += cells
        if write_ahead:
            self.write_ahead_reads += cells

    @contextlib.contextmanager
    def counting_wire(self, board: Board) -> Iterator[None]:
        """Add the link bytes of the enclosed training operations to the run's total."""
        before = board.wire_bytes
        try:
            yield
        finally:
            self.wire_bytes += board.wire_bytes - before

    def load(self, saved: dict) -> None:
        """Take the figures of a checkpoint (in place: the run's parts share this object)."""
        restored = Totals(**saved)
        for f in fields(self):
            setattr(self, f.name, getattr(restored, f.name))


def _rules(model: MLP) -> list:
    return [layer.rule for layer in model.layers if layer.analog]


def save_state(model: MLP, optimizer: Optimizer, totals: Totals) -> tuple[dict, dict[str, np.ndarray]]:
    """The host state as (JSON meta, named arrays)."""
    arrays: dict[str, np.ndarray] = {}
    for k, b in enumerate(model.biases):
        arrays[f"b{k}"] = b
    for k, layer in enumerate(model.layers):
        for name, val in layer.state_dict().items():
            if val is not None:
                arrays[f"layer{k}.{name}"] = val
    opt_meta: dict[str, Any] = {}
    for name, val in optimizer.state_dict().items():
        if isinstance(val, list):
            for i, a in enumerate(val):
                arrays[f"opt.{name}.{i}"] = np.asarray(a)
            opt_meta[name] = len(val)
        elif isinstance(val, np.ndarray):
            arrays[f"opt.{name}"] = val
            opt_meta[name] = "array"
        else:
            opt_meta[name] = {"value": val}
    for k, rule in enumerate(_rules(model)):
        for name, val in rule.state_dict().items():
            arrays[f"rule{k}.{name}"] = np.asarray(val)
    return {"totals": totals.__dict__, "optimizer": opt_meta}, arrays


def _with_prefix(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {n[len(prefix):]: a for n, a in arrays.items() if n.startswith(prefix)}


def load_state(model: MLP, optimizer: Optimizer, totals: Totals, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Restore what :func:`save_state` saved."""
    model.biases = [arrays[f"b{k}"] for k in range(len(model.layers))]
    for k, layer in enumerate(model.layers):
        prefix = f"layer{k}."
        layer.load_state_dict(_with_prefix(arrays, prefix) | ({} if f"{prefix}w_read" in arrays else {"w_read": None}))
    opt: dict[str, Any] = {}
    for name, spec in meta["optimizer"].items():
        if isinstance(spec, int):
            opt[name] = [arrays[f"opt.{name}.{i}"] for i in range(spec)]
        elif spec == "array":
            opt[name] = arrays[f"opt.{name}"]
        else:
            opt[name] = spec["value"]
    optimizer.load_state_dict(opt)
    for k, rule in enumerate(_rules(model)):
        rule_state = _with_prefix(arrays, f"rule{k}.")
        if rule_state:
            rule.load_state_dict(rule_state)
    totals.load(meta["totals"])
