"""What an update rule answers and the ground every rule stands on (see :mod:`hil.update_rules`).

:class:`UpdatePlan` (signed whole pulses and partial pulses per device), :class:`WidthGrid` (the
partial-pulse widths a board can make), :func:`directional_step`, the input checks every rule shares,
and the :class:`UpdateRule` base class.  ``hil.update_rules`` re-exports the public names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class UpdatePlan:
    """What a rule decided for one step.

    Attributes
    ----------
    pulses:
        ``int64``, same shape as ``delta_g_s``. Signed count of WHOLE pulses per
        device (each of the full profile width): ``> 0`` SET pulses (conductance
        up), ``< 0`` RESET pulses.
    applied_target_s:
        ``float64``, ``(pulses + partial_frac) * step_s``: the mean conductance
        change the rule intends to cause (siemens), for bookkeeping and
        weight-estimate updates.
    kept:
        ``bool``, the devices that receive a write event (whole or partial pulses);
        the others get nothing, hence no write noise.
    partial_frac:
        ``float64`` in ``(-1, 1)``, same shape: one extra pulse per device whose
        width is ``|partial_frac|`` times the profile width of its polarity (its mean
        step scales with its width), signed like ``pulses`` (a device never gets
        both polarities); ``0`` = no partial pulse. Only :class:`BP` plans partial
        pulses; the default (``None``) means none.
    """

    pulses: np.ndarray
    applied_target_s: np.ndarray
    kept: np.ndarray
    partial_frac: np.ndarray = None  # type: ignore[assignment]  # zeros when not given

    def __post_init__(self) -> None:
        if self.partial_frac is None:
            object.__setattr__(self, "partial_frac", np.zeros(np.shape(self.pulses)))

    @property
    def n_written(self) -> int:
        """Number of devices receiving a write event."""
        return int(np.count_nonzero(self.kept))

    @property
    def n_partial(self) -> int:
        """Number of partial (width-modulated) pulses."""
        return int(np.count_nonzero(self.partial_frac))

    @property
    def n_pulses(self) -> int:
        """Total number of pulses sent, whole and partial (both polarities)."""
        return int(np.abs(self.pulses).sum()) + self.n_partial

    @property
    def write_fraction(self) -> float:
        """Devices written / devices considered (0.0 for an empty plan)."""
        return self.n_written / self.kept.size if self.kept.size else 0.0


@dataclass(frozen=True)
class WidthGrid:
    """The partial-pulse widths a board can make, as fractions of the profile width.

    A board makes widths on a grid of its timing resolution, from its (effective)
    minimum pulse width up. ``quantum_frac = timing_resolution_sec / profile width``
    and ``min_frac = min_pulse_width_sec / profile width``, each a scalar or an array
    broadcastable to ``ΔG`` (per device: SET and RESET profiles may differ in width).
    Build it for a board with :func:`hil.layers.width_grid`.
    """

    quantum_frac: np.ndarray | float
    min_frac: np.ndarray | float

    def levels(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(quantum, smallest non-zero width) per device, as fractions, broadcast to ``shape``."""
        q = np.asarray(self.quantum_frac, dtype=np.float64)
        m = np.asarray(self.min_frac, dtype=np.float64)
        if not (np.all(np.isfinite(q)) and np.all(q > 0) and np.all(np.isfinite(m)) and np.all(m >= 0)):
            raise ValueError("WidthGrid: quantum_frac must be finite and > 0, min_frac finite and >= 0")
        q = np.broadcast_to(q, shape)
        # the shortest width the board makes: the first grid point at or above the minimum
        m_eff = np.maximum(np.ceil(np.broadcast_to(m, shape) / q * (1 - 1e-9)), 1.0) * q
        return q, m_eff


# --------------------------------------------------------------------------- helpers


def directional_step(
    delta_g_s: np.ndarray, step_set_s: np.ndarray | float, step_reset_s: np.ndarray | float
) -> np.ndarray:
    """Per-device step magnitude for the direction each device will move.

    ``step_set_s`` where ``ΔG >= 0``, ``step_reset_s`` where ``ΔG < 0`` (both
    positive magnitudes, broadcastable to ``delta_g_s``).
    """
    dg = np.asarray(delta_g_s, dtype=np.float64)
    return np.where(dg >= 0, np.asarray(step_set_s, float), np.asarray(step_reset_s, float))


def as_delta(delta_g_s: Any) -> np.ndarray:
    dg = np.asarray(delta_g_s, dtype=np.float64)
    if not np.all(np.isfinite(dg)):
        raise ValueError("delta_g_s contains NaN or infinite values")
    return dg


def as_step(step_s: Any, shape: tuple[int, ...]) -> np.ndarray:
    step = np.asarray(step_s, dtype=np.float64)
    if not (np.all(np.isfinite(step)) and np.all(step > 0)):
        raise ValueError("step_s must be finite and > 0 (one pulse's mean |ΔG|, siemens)")
    try:
        return np.broadcast_to(step, shape)
    except ValueError as exc:
        raise ValueError(f"step_s of shape {step.shape} does not broadcast to {shape}") from exc


def check_max_pulses(max_pulses: Any) -> int:
    if isinstance(max_pulses, bool) or int(max_pulses) != max_pulses or max_pulses < 1:
        raise ValueError(f"max_pulses must be an integer >= 1, got {max_pulses!r}")
    return int(max_pulses)


def check_rng(rng: Any, rule: str) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{rule} is random: pass a seeded np.random.Generator, got {type(rng).__name__}"
        )
    return rng


def to_pulses(n: np.ndarray, max_pulses: int) -> np.ndarray:
    """Clip a float pulse count to +-max_pulses and cast (clip first: no int overflow)."""
    return np.clip(n, -max_pulses, max_pulses).astype(np.int64)


def make_plan(pulses: np.ndarray, step: np.ndarray) -> UpdatePlan:
    return UpdatePlan(pulses=pulses, applied_target_s=pulses * step, kept=pulses != 0)


# --------------------------------------------------------------------------- base class


class UpdateRule(ABC):
    """Common interface. Subclasses set ``name`` and implement :meth:`plan`."""

    name: ClassVar[str] = ""
    #: False only for :class:`Float`: the loop then updates the weights digitally.
    uses_array: ClassVar[bool] = True
    #: True when :meth:`plan` consumes random numbers from ``rng``.
    random: ClassVar[bool] = False

    @abstractmethod
    def plan(
        self,
        delta_g_s: np.ndarray,
        step_s: np.ndarray | float,
        rng: np.random.Generator | None = None,
        width_grid: WidthGrid | None = None,
    ) -> UpdatePlan:
        """Decide the pulses for the desired changes ``delta_g_s`` (siemens).

        ``width_grid``: the partial-pulse widths the board can make; used by ``bp``
        only (the whole-pulse rules ignore it). ``None``: any width.
        """

    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON-friendly)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Mutable state for checkpoints (copies). Empty for stateless rules."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{self.name} is stateless, got state keys {sorted(state)}")

    def reset(self) -> None:
        """Forget any accumulated state."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class PulseCapped(UpdateRule):
    """A rule whose only setting is the cap on pulses per device per step."""

    def __init__(self, max_pulses: int = 100):
        self.max_pulses = check_max_pulses(max_pulses)

    def config(self) -> dict[str, Any]:
        return {"max_pulses": self.max_pulses}
