"""Safety limits and pulse profiles: what may be put on a device, checked before any byte is sent.

Two sets of limits meet here: the board's hardware limits (reported by the board, or
stated by a VISA bench file) and the user's :class:`SafetyLimits` (``hil --limits``).
The effective limits are the tighter of the two in every field
(:func:`effective_limits`): a user value looser than the hardware's is never used --
it is logged as a warning and ``hil info`` shows which side set each field.  A user
pulse-width window that does not overlap the hardware's cannot be tightened into a
valid window; that is a :class:`~drivers.errors.LimitConflict` naming both windows.

Every comparison against a limit goes through :func:`exceeds` / :func:`falls_below`,
which forgive float rounding (relative :data:`REL_TOL`), so a value exactly at a
limit passes however it was computed; the value actually sent is then clamped onto
the limit, so nothing beyond a limit ever leaves the host, not even by one ulp.
Every Board implementation calls the ``check_*`` functions below before encoding a
request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from pydantic import ConfigDict, Field, ValidationError, model_validator

from drivers.errors import LimitConflict, LimitViolation
from protocols.unit_names import AcceptsOldSecondNames

log = logging.getLogger(__name__)

#: Relative tolerance of every limit comparison (float rounding at the boundary).
REL_TOL = 1e-9


def exceeds(value: np.ndarray | float, limit: float) -> bool:
    """True if any of ``value`` lies above ``limit`` by more than float rounding (or is NaN)."""
    arr = np.asarray(value, dtype=float)
    return not bool(np.all(arr <= limit + REL_TOL * abs(limit)))


def falls_below(value: np.ndarray | float, floor: float) -> bool:
    """True if any of ``value`` lies below ``floor`` by more than float rounding (or is NaN)."""
    arr = np.asarray(value, dtype=float)
    return not bool(np.all(arr >= floor - REL_TOL * abs(floor)))


def clamp(value, lo: float, hi: float):
    """``value`` clipped into [lo, hi]: after a tolerant check, what is sent never leaves the limits."""
    out = np.clip(np.asarray(value, dtype=float), lo, hi)
    return float(out) if out.ndim == 0 else out


class PulseProfile(AcceptsOldSecondNames):
    """One rectangular write pulse: signed amplitude (V) and width (s)."""

    model_config = ConfigDict(frozen=True)

    amplitude_v: float = Field(description="signed pulse amplitude at the device, volts")
    width_sec: float = Field(gt=0, description="pulse width, seconds")


DEFAULT_SET = PulseProfile(amplitude_v=1.6, width_sec=50e-9)
DEFAULT_RESET = PulseProfile(amplitude_v=-1.8, width_sec=50e-9)


class SafetyLimits(AcceptsOldSecondNames):
    """Limits every voltage-bearing request is checked against (SI units)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_set_v: float = Field(2.5, gt=0, description="largest positive write amplitude")
    max_reset_v: float = Field(2.5, gt=0, description="largest magnitude of a negative write amplitude")
    max_read_v: float = Field(0.3, gt=0, description="largest |V| for reads and VMM inputs")
    max_form_v: float = Field(3.5, gt=0, description="largest forming (and positive sweep) voltage")
    compliance_a: float = Field(1e-3, gt=0, description="current compliance for reads and sweeps")
    min_pulse_width_sec: float = Field(
        1e-12, gt=0, description="shortest pulse; a short pulse puts less energy into a device, not more, so "
        "the default leaves the floor to the hardware (its own minimum); raise it for a generator whose "
        "short pulses ring or overshoot")
    max_pulse_width_sec: float = Field(1e-3, gt=0, description="longest pulse")
    max_pulses_per_batch: int = Field(8_000_000, gt=0, description="pulses in one batch, all devices")
    max_pulses_per_device: int = Field(255, gt=0, description="pulses one device may get in one batch")

    @model_validator(mode="after")
    def _widths_ordered(self) -> "SafetyLimits":
        if self.min_pulse_width_sec > self.max_pulse_width_sec:
            raise ValueError(
                f"min_pulse_width_sec ({self.min_pulse_width_sec:g}) exceeds max_pulse_width_sec ({self.max_pulse_width_sec:g})"
            )
        return self

    def tightened(self, other: "SafetyLimits") -> "SafetyLimits":
        """The limits that satisfy both ``self`` and ``other`` (field by field the stricter).

        :class:`~drivers.errors.LimitConflict` if the two pulse-width windows do not overlap.
        """
        return effective_limits(self, other, user_label="these limits", hardware_label="the other limits",
                                warn=None).limits


#: Fields where the larger value is the stricter one (all others: the smaller).
_LARGER_IS_TIGHTER = frozenset({"min_pulse_width_sec"})

#: Device-safe hardware limits of the array and its FPGA controller (the emulated board's own:
#: ``firmware_stub.firmware.HardwareLimits`` holds the same numbers).  A VISA bench whose bench file
#: has no ``[limits]`` section gets these, not the instruments' ratings.
DEVICE_SAFE_LIMITS = SafetyLimits(
    max_set_v=3.0, max_reset_v=3.0, max_read_v=0.5, max_form_v=4.0, compliance_a=1e-3,
    min_pulse_width_sec=100e-12, max_pulse_width_sec=1e-3, max_pulses_per_batch=64_000_000, max_pulses_per_device=255,
)


@dataclass(frozen=True)
class EffectiveLimits:
    """The effective limits and, per field, which side set them.

    ``sources[field]`` is ``"user"`` (a value the user gave explicitly), ``"default"``
    (the user side's default) or ``"hardware"`` (the hardware's was stricter);
    ``refused[field] = (asked, used)`` lists user values looser than the hardware's.
    """

    limits: SafetyLimits
    sources: dict[str, str] = field(default_factory=dict)
    refused: dict[str, tuple[float, float]] = field(default_factory=dict)


def _looser(name: str, user: float, hardware: float) -> bool:
    return user < hardware if name in _LARGER_IS_TIGHTER else user > hardware


def effective_limits(user: SafetyLimits, hardware: SafetyLimits, *, user_label: str = "the user limits (--limits)",
                     hardware_label: str = "the board's hardware limits", warn: int | None = logging.WARNING,
                   explicit: frozenset[str] | set[str] | None = None) -> EffectiveLimits:
    """The tighter of ``user`` and ``hardware`` in every field, with where each field came from.

    A field the user set explicitly (``explicit``, default ``user.model_fields_set``)
    looser than the hardware's is not used: a log record of level ``warn`` says so
    (none if ``warn`` is None).  Raises
    :class:`~drivers.errors.LimitConflict` if the pulse-width windows do not overlap.
    """
    u, h = user.model_dump(), hardware.model_dump()
    explicit = user.model_fields_set if explicit is None else explicit
    lo = max(u["min_pulse_width_sec"], h["min_pulse_width_sec"])
    hi = min(u["max_pulse_width_sec"], h["max_pulse_width_sec"])
    if lo > hi:
        raise LimitConflict(
            f"{user_label} allow pulse widths [{u['min_pulse_width_sec']:.3g}, {u['max_pulse_width_sec']:.3g}] s but "
            f"{hardware_label} allow [{h['min_pulse_width_sec']:.3g}, {h['max_pulse_width_sec']:.3g}] s: the windows "
            f"do not overlap; set min_pulse_width_sec and max_pulse_width_sec in {user_label} within "
            f"[{h['min_pulse_width_sec']:.3g}, {h['max_pulse_width_sec']:.3g}] s"
        )
    out, sources, refused = {}, {}, {}
    for name, uv in u.items():
        hv = h[name]
        if _looser(name, uv, hv):
            out[name], sources[name] = hv, "hardware"
            if name in explicit:
                refused[name] = (uv, hv)
                if warn is not None:
                    log.log(warn, "%s ask %s = %g, beyond %s (%g): using %g", user_label, name, uv, hardware_label,
                                hv, hv)
        else:
            out[name] = uv
            sources[name] = "user" if name in explicit else "default"
    return EffectiveLimits(SafetyLimits(**out), sources, refused)


def check_profile(profile: PulseProfile, polarity: int, limits: SafetyLimits) -> PulseProfile:
    """Raise :class:`LimitViolation` unless ``profile`` is a legal pulse of ``polarity`` (+1 SET, -1 RESET).

    Returns the profile to send: clamped onto the limits (it differs only by float rounding).
    """
    v, w = profile.amplitude_v, profile.width_sec
    if polarity > 0:
        if not v > 0 or exceeds(v, limits.max_set_v):
            raise LimitViolation(
                f"SET amplitude {v:+.3f} V is outside (0, {limits.max_set_v:.3f}] V; "
                "use a positive amplitude within max_set_v or raise the limit in the safety configuration"
            )
        v = clamp(v, 0.0, limits.max_set_v)
    else:
        if not v < 0 or exceeds(-v, limits.max_reset_v):
            raise LimitViolation(
                f"RESET amplitude {v:+.3f} V is outside [-{limits.max_reset_v:.3f}, 0) V; "
                "use a negative amplitude within max_reset_v or raise the limit in the safety configuration"
            )
        v = clamp(v, -limits.max_reset_v, 0.0)
    check_duration(w, limits, "pulse width")
    w = clamp(w, limits.min_pulse_width_sec, limits.max_pulse_width_sec)
    if (v, w) == (profile.amplitude_v, profile.width_sec):
        return profile
    return PulseProfile(amplitude_v=v, width_sec=w)


def check_duration(seconds: float, limits: SafetyLimits, what: str = "duration") -> float:
    """Raise unless ``seconds`` lies in the pulse-width window; returns it clamped into the window."""
    if falls_below(seconds, limits.min_pulse_width_sec) or exceeds(seconds, limits.max_pulse_width_sec):
        raise LimitViolation(
            f"{what} {seconds:.3g} s is outside [{limits.min_pulse_width_sec:.3g}, {limits.max_pulse_width_sec:.3g}] s "
            "(min_pulse_width_sec, max_pulse_width_sec)"
        )
    return clamp(seconds, limits.min_pulse_width_sec, limits.max_pulse_width_sec)


def check_compliance(compliance_a: float, limits: SafetyLimits) -> float:
    """Raise unless 0 < ``compliance_a`` <= compliance_a limit; returns it clamped onto the limit."""
    if not compliance_a > 0 or exceeds(compliance_a, limits.compliance_a):
        raise LimitViolation(f"compliance {compliance_a:.3g} A is outside (0, {limits.compliance_a:.3g}] A "
                             "(compliance_a)")
    return clamp(compliance_a, 0.0, limits.compliance_a)


def check_form_voltage(voltage_v: float, limits: SafetyLimits) -> float:
    """Raise unless 0 < ``voltage_v`` <= max_form_v; returns it clamped onto the limit."""
    if not voltage_v > 0 or exceeds(voltage_v, limits.max_form_v):
        raise LimitViolation(f"forming voltage {voltage_v:+.3f} V is outside (0, {limits.max_form_v:.3f}] V "
                             "(max_form_v)")
    return clamp(voltage_v, 0.0, limits.max_form_v)


def check_sweep_voltages(volts: np.ndarray, limits: SafetyLimits) -> np.ndarray:
    """Raise unless every sweep voltage lies in [-max_reset_v, max(max_set_v, max_form_v)]; returns them clamped."""
    volts = np.asarray(volts, dtype=float)
    if not np.all(np.isfinite(volts)):
        raise LimitViolation("sweep voltages contain NaN or infinity")
    top = max(limits.max_set_v, limits.max_form_v)
    if volts.size and (exceeds(volts, top) or exceeds(-volts, limits.max_reset_v)):
        raise LimitViolation(f"sweep from {volts.min():+.3f} V to {volts.max():+.3f} V leaves "
                             f"[-{limits.max_reset_v:.3f}, {top:.3f}] V (max_reset_v, max_set_v/max_form_v)")
    return np.clip(volts, -limits.max_reset_v, top)


def max_pulses_per_event(limits: SafetyLimits) -> int:
    """Most pulses one device can get in one write event (one batch)."""
    return min(limits.max_pulses_per_device, limits.max_pulses_per_batch)


def check_event_pulses(n: int, limits: SafetyLimits, what: str) -> None:
    """Raise unless a write event of ``n`` pulses on one device fits one batch."""
    top = max_pulses_per_event(limits)
    if abs(int(n)) > top:
        raise LimitViolation(f"{what} asks {abs(int(n))} pulses per write event; the limits allow {top} "
                             "(max_pulses_per_device, max_pulses_per_batch): lower it")


def batch_slices(magnitudes: np.ndarray, max_pulses_per_batch: int) -> list[slice]:
    """Consecutive slices of ``magnitudes`` (pulses per device, each <= the batch limit) packed greedily
    so that every slice holds at most ``max_pulses_per_batch`` pulses."""
    mags = np.asarray(magnitudes, dtype=np.int64)
    if mags.size and mags.max() > max_pulses_per_batch:
        raise LimitViolation(f"one device asks {int(mags.max())} pulses, more than a whole batch may hold "
                             f"({max_pulses_per_batch}, max_pulses_per_batch)")
    csum = np.concatenate([[0], np.cumsum(mags)])
    out, start = [], 0
    while start < mags.size:
        stop = int(np.searchsorted(csum, csum[start] + max_pulses_per_batch, side="right")) - 1
        out.append(slice(start, stop))
        start = stop
    return out


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


def check_pulse_widths(widths_sec: np.ndarray, profile_width_sec: np.ndarray | float, limits: SafetyLimits) -> None:
    """Raise unless every (partial) pulse width is within the limits and at most its profile's width.

    A relative tolerance of 1e-9 absorbs float rounding of widths planned on the limit.
    """
    w = np.asarray(widths_sec, dtype=float)
    if w.size == 0:
        return
    if not np.all(np.isfinite(w)):
        raise LimitViolation("pulse widths contain NaN or infinity")
    tol = 1 + 1e-9
    lo, hi = float(w.min()), float(w.max())
    if lo * tol < limits.min_pulse_width_sec or hi > limits.max_pulse_width_sec * tol:
        raise LimitViolation(
            f"pulse widths from {lo:.3g} s to {hi:.3g} s leave [{limits.min_pulse_width_sec:.3g}, "
            f"{limits.max_pulse_width_sec:.3g}] s (min_pulse_width_sec, max_pulse_width_sec); plan partial pulses "
            "on the board's width grid (hil.layers.width_grid) or change the limits"
        )
    over = w > np.asarray(profile_width_sec, dtype=float) * tol
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
    if exceeds(worst, limits.max_read_v):
        raise LimitViolation(
            f"read/VMM input of {worst:.3f} V exceeds max_read_v = {limits.max_read_v:.3f} V; "
            "scale the inputs down or raise the limit in the safety configuration"
        )


def load_limits(path) -> SafetyLimits:
    """Safety limits from a TOML file (flat, or under ``[limits]``); defaults for missing fields.

    Problems are one-line ``ValueError`` s naming the file and the field.
    """
    import sys
    from pathlib import Path

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"safety limits file {p} does not exist") from None
    except OSError as exc:
        raise ValueError(f"cannot read safety limits file {p}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"safety limits file {p} is not valid TOML: {exc}") from None
    section = data.get("limits", data)
    if not isinstance(section, dict):
        raise ValueError(f"safety limits file {p}: [limits] must be a table of limit = value lines")
    try:
        return SafetyLimits(**section)
    except ValidationError as exc:
        raise ValueError(f"safety limits file {p}: {validation_summary(exc)}") from None


def validation_summary(exc: ValidationError) -> str:
    """A pydantic error as one line: ``field: message; field: message``."""
    parts = []
    for err in exc.errors():
        where = ".".join(map(str, err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)
