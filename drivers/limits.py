"""Safety limits and pulse profiles: what may be put on a device, checked before any byte is sent.

Two sets of limits meet here: the board's hardware limits (reported by the board)
and the user's configured :class:`SafetyLimits`.  The effective limits are the
tighter of the two in every field (:meth:`SafetyLimits.tightened`).  Every Board
implementation calls the ``check_*`` functions below before encoding a request.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.errors import LimitViolation


class PulseProfile(BaseModel):
    """One rectangular write pulse: signed amplitude (V) and width (s)."""

    model_config = ConfigDict(frozen=True)

    amplitude_v: float = Field(description="signed pulse amplitude at the device, volts")
    width_s: float = Field(gt=0, description="pulse width, seconds")


DEFAULT_SET = PulseProfile(amplitude_v=1.6, width_s=50e-9)
DEFAULT_RESET = PulseProfile(amplitude_v=-1.8, width_s=50e-9)


class SafetyLimits(BaseModel):
    """Limits every voltage-bearing request is checked against (SI units)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_set_v: float = Field(2.5, gt=0, description="largest positive write amplitude")
    max_reset_v: float = Field(2.5, gt=0, description="largest magnitude of a negative write amplitude")
    max_read_v: float = Field(0.3, gt=0, description="largest |V| for reads and VMM inputs")
    max_form_v: float = Field(3.5, gt=0, description="largest forming (and positive sweep) voltage")
    compliance_a: float = Field(1e-3, gt=0, description="current compliance for reads and sweeps")
    min_pulse_width_s: float = Field(
        1e-12, gt=0, description="shortest pulse; a short pulse puts less energy into a device, not more, so "
        "the default leaves the floor to the hardware (its own minimum); raise it for a generator whose "
        "short pulses ring or overshoot")
    max_pulse_width_s: float = Field(1e-3, gt=0)
    max_pulses_per_batch: int = Field(8_000_000, gt=0, description="pulses in one batch, all devices")
    max_pulses_per_device: int = Field(255, gt=0, description="pulses one device may get in one batch")

    @model_validator(mode="after")
    def _widths_ordered(self) -> "SafetyLimits":
        if self.min_pulse_width_s > self.max_pulse_width_s:
            raise ValueError(
                f"min_pulse_width_s ({self.min_pulse_width_s}) exceeds max_pulse_width_s ({self.max_pulse_width_s})"
            )
        return self

    def tightened(self, other: "SafetyLimits") -> "SafetyLimits":
        """The limits that satisfy both ``self`` and ``other`` (field by field the stricter)."""
        d1, d2 = self.model_dump(), other.model_dump()
        out = {k: (max(d1[k], d2[k]) if k == "min_pulse_width_s" else min(d1[k], d2[k])) for k in d1}
        return SafetyLimits(**out)


def check_profile(profile: PulseProfile, polarity: int, limits: SafetyLimits) -> None:
    """Raise :class:`LimitViolation` unless ``profile`` is a legal pulse of ``polarity`` (+1 SET, -1 RESET)."""
    v, w = profile.amplitude_v, profile.width_s
    if polarity > 0:
        if not 0 < v <= limits.max_set_v:
            raise LimitViolation(
                f"SET amplitude {v:+.3f} V is outside (0, {limits.max_set_v:.3f}] V; "
                "use a positive amplitude within max_set_v or raise the limit in the safety configuration"
            )
    else:
        if not -limits.max_reset_v <= v < 0:
            raise LimitViolation(
                f"RESET amplitude {v:+.3f} V is outside [-{limits.max_reset_v:.3f}, 0) V; "
                "use a negative amplitude within max_reset_v or raise the limit in the safety configuration"
            )
    if not limits.min_pulse_width_s <= w <= limits.max_pulse_width_s:
        raise LimitViolation(
            f"pulse width {w:.3g} s is outside [{limits.min_pulse_width_s:.3g}, {limits.max_pulse_width_s:.3g}] s"
        )


def check_pulse_counts(counts: np.ndarray, limits: SafetyLimits) -> None:
    """Raise unless the signed per-device pulse counts of one batch are within the limits."""
    if counts.size == 0:
        return
    mags = np.abs(counts.astype(np.int64))
    worst = int(mags.max())
    if worst > limits.max_pulses_per_device:
        raise LimitViolation(
            f"a device would receive {worst} pulses in one batch; the limit is "
            f"{limits.max_pulses_per_device} (max_pulses_per_device): split the update over several batches"
        )
    total = int(mags.sum())
    if total > limits.max_pulses_per_batch:
        raise LimitViolation(
            f"the batch holds {total} pulses; the limit is {limits.max_pulses_per_batch} (max_pulses_per_batch)"
        )


def check_pulse_widths(widths_s: np.ndarray, profile_width_s: np.ndarray | float, limits: SafetyLimits) -> None:
    """Raise unless every (partial) pulse width is within the limits and at most its profile's width.

    A relative tolerance of 1e-9 absorbs float rounding of widths planned on the limit.
    """
    w = np.asarray(widths_s, dtype=float)
    if w.size == 0:
        return
    if not np.all(np.isfinite(w)):
        raise LimitViolation("pulse widths contain NaN or infinity")
    tol = 1 + 1e-9
    lo, hi = float(w.min()), float(w.max())
    if lo * tol < limits.min_pulse_width_s or hi > limits.max_pulse_width_s * tol:
        raise LimitViolation(
            f"pulse widths from {lo:.3g} s to {hi:.3g} s leave [{limits.min_pulse_width_s:.3g}, "
            f"{limits.max_pulse_width_s:.3g}] s (min_pulse_width_s, max_pulse_width_s); plan partial pulses "
            "on the board's width grid (hil.layers.width_grid) or change the limits"
        )
    over = w > np.asarray(profile_width_s, dtype=float) * tol
    if np.any(over):
        k = int(np.argmax(over))
        raise LimitViolation(
            f"a last-pulse width of {w[k]:.3g} s exceeds its profile's width: a partial pulse is at most one "
            "full pulse (send more pulses instead)"
        )


def check_read_voltage(v: np.ndarray | float, limits: SafetyLimits) -> None:
    """Raise unless every read/VMM input voltage satisfies ``|V| <= max_read_v``."""
    arr = np.asarray(v, dtype=float)
    if arr.size and not np.all(np.isfinite(arr)):
        raise LimitViolation("read/VMM input voltages contain NaN or infinity")
    worst = float(np.max(np.abs(arr))) if arr.size else 0.0
    if worst > limits.max_read_v * (1 + 1e-9):
        raise LimitViolation(
            f"read/VMM input of {worst:.3f} V exceeds max_read_v = {limits.max_read_v:.3f} V; "
            "scale the inputs down or raise the limit in the safety configuration"
        )


def load_limits(path) -> SafetyLimits:
    """Safety limits from a TOML file (flat, or under ``[limits]``); defaults for missing fields."""
    import sys
    from pathlib import Path

    from pydantic import ValidationError

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"safety limits file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"safety limits file {p} is not valid TOML: {exc}") from None
    try:
        return SafetyLimits(**data.get("limits", data))
    except ValidationError as exc:
        raise ValueError(f"safety limits file {p}: {exc}") from None
