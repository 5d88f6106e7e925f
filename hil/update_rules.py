"""Update rules: how a desired conductance change becomes write pulses.

The training loop computes an optimizer step on the host, maps it to a desired
conductance change ``ΔG`` (siemens) for every device of every differential pair,
and asks an :class:`UpdateRule` which pulses to send. The rule answers with an
:class:`UpdatePlan`: a signed count of whole pulses per device (``+`` = SET,
conductance goes up; ``-`` = RESET, conductance goes down) and, for ``bp`` only, a
signed partial pulse (a single pulse whose width is a fraction of the profile's);
a device with neither gets no write event at all.

Rules (see ``docs/EAPU.md``):

==============  ==============================================================
``float``       :class:`Float` -- marker, no array; the loop applies ΔW digitally
``bp``          :class:`BP` -- the published every-step noisy write: one write event per
                non-zero ΔG, sized as asked (whole pulses + one width-modulated pulse)
``bp-pulses``   :class:`BPPulses` -- every non-zero ΔG written as ``max(1, round(|ΔG|/μ))``
                whole pulses (all ``bp`` can be on a board without width modulation)
``eapu``        :class:`EaPU` -- the error-aware probabilistic update
``mixed``       :class:`Mixed` -- MADEM-style digital accumulator ``χ``
``manhattan``   :class:`Manhattan` -- one pulse of ``sign(ΔG)`` above a threshold
``stochastic``  :class:`Stochastic` -- stochastic rounding to whole pulses
==============  ==============================================================

Conventions shared by every rule
--------------------------------
* ``step_s`` is the calibrated *mean* conductance change of ONE pulse (a positive
  magnitude, siemens), scalar or any array broadcastable to ``delta_g_s``. It may
  be per device and state dependent; the caller supplies it. SET and RESET steps
  differ on real devices: build a per-device step for the direction each device
  will move with :func:`directional_step`.
* ``UpdatePlan.applied_target_s = (pulses + partial_frac) * step_s`` is the
  conductance change the rule intends to cause, i.e. what the pulses produce *on average* if the
  calibrated step is right. All statistical properties (unbiasedness, χ
  conservation) are stated for this quantity.
* Randomness comes only from the ``np.random.Generator`` passed to ``plan``. The
  random rules draw exactly one uniform per element of ``delta_g_s`` per call
  (kept or not), so the stream consumed depends only on the array shape, never
  on the data: runs replay exactly from the seed.
* Everything is vectorised elementwise; the array shape is free (a matrix, a
  flat vector of devices, a stack of both pair halves ...).
* Non-finite ``ΔG`` or non-positive / non-finite steps raise ``ValueError``.
* ``plan`` takes an optional :class:`WidthGrid`: the partial-pulse widths the board
  can make. Only ``bp`` sends partial pulses; the whole-pulse rules ignore it.
* Every rule has ``state_dict()`` / ``load_state_dict()`` (empty for stateless
  rules) and ``config()``, with ``make_rule(rule.name, **rule.config())``
  rebuilding an equivalent rule.

BP with partial pulses
----------------------
The published BP baseline writes every non-zero update every step, as asked: a
device's write event is ``n = floor(|ΔG|/step)`` whole pulses plus ONE pulse whose
width is the remaining fraction of the profile width (the device model's width law:
a pulse's mean step scales with its width). Boards make widths on a grid (timing
resolution) from a minimum width up; :class:`BP` rounds the fraction to that grid
stochastically and without bias (see its docstring), so only requests below the
board's shortest pulse can skip a step. :class:`BPPulses` is the whole-pulse variant.

EaPU in pulse units
-------------------
A device can only receive whole pulses, so the EaPU quantum is one pulse train of
``n_th = max(1, round(ΔGth / step))`` pulses (per device, capped at
``max_pulses``), whose mean change is ``q = n_th * step``. The keep probability is
``min(1, |ΔG| / q)`` -- *not* ``|ΔG| / ΔGth`` -- and sub-quantum kept updates are
written as ``sign(ΔG) * n_th`` pulses. Hence for ``|ΔG| < q``::

    E[applied] = (|ΔG| / q) * sign(ΔG) * q = ΔG      exactly.

When ``ΔGth`` is a whole number of steps, ``q == ΔGth`` and this is the published
rule verbatim. Otherwise the quantum differs from ``ΔGth`` by at most half a step
and the rule stays exactly unbiased in pulse units. Updates with ``|ΔG| >= q`` are
always kept and written as ``round(ΔG / step)`` pulses (the project design); that
deterministic rounding is off by at most half a step per device. Pass
``supra_rounding="stochastic"`` to round them stochastically instead, which makes
EaPU exactly unbiased everywhere (up to the ``max_pulses`` clip, which no rule can
undo: a clipped update is smaller than asked).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from calibration.threshold import quantum_pulses
from hil.update_plan import (
    PulseCapped,
    UpdatePlan,
    UpdateRule,
    WidthGrid,
    as_delta,
    as_step,
    check_max_pulses,
    check_rng,
    directional_step,
    make_plan,
    to_pulses,
)

__all__ = [
    "UpdatePlan",
    "UpdateRule",
    "Float",
    "BP",
    "BPPulses",
    "WidthGrid",
    "EaPU",
    "Mixed",
    "Manhattan",
    "Stochastic",
    "RULES",
    "make_rule",
    "directional_step",
]


# --------------------------------------------------------------------------- rules

class Float(UpdateRule):
    """Digital reference: no array. :meth:`plan` refuses to run.

    The loop must check ``rule.uses_array`` and apply ΔW digitally; a plan that
    silently sent nothing would hide that bug, so calling it raises.
    """

    name = "float"
    uses_array = False

    def plan(self, delta_g_s, step_s, rng=None, width_grid=None) -> UpdatePlan:  # noqa: D102
        raise RuntimeError("the 'float' rule has no array: apply ΔW digitally (uses_array=False)")


class BPPulses(PulseCapped):
    """Backprop writes in whole pulses: every device with ``ΔG != 0`` gets
    ``sign(ΔG) * max(1, round(|ΔG|/step))`` pulses, clipped to ``max_pulses``.

    On a board without width modulation this is all plain BP can be; a request far
    below one step is rounded UP to a whole pulse (a sign-SGD-like overshoot).
    """

    name = "bp-pulses"

    def plan(self, delta_g_s, step_s, rng=None, width_grid=None) -> UpdatePlan:
        dg = as_delta(delta_g_s)
        step = as_step(step_s, dg.shape)
        n = np.maximum(1.0, np.rint(np.abs(dg) / step)) * np.sign(dg)  # sign(0) = 0
        return make_plan(to_pulses(n, self.max_pulses), step)


class BP(PulseCapped):
    """The published every-step noisy write: ``ΔG`` written as asked, one write event per device.

    ``x = min(|ΔG|/step, max_pulses)`` becomes ``n = floor(x)`` whole pulses plus one
    partial pulse of width fraction ``f = x - n`` of the profile width, in the
    direction of ``ΔG``; so ``(n + f) * step = |ΔG|`` (up to the clip).

    With a :class:`WidthGrid` the fraction is rounded stochastically to the widths
    the board can make: to the two neighbouring grid widths with the probabilities
    that keep its mean at ``f`` -- and below the board's shortest width ``m`` to
    ``m`` with probability ``f/m``, else to no partial pulse. So ``E[applied] = ΔG``
    exactly (before the clip); only a device whose whole request lies below the
    shortest width can go unwritten in a step (then with probability ``1 - f/m``).
    A fraction rounded up to a full width becomes one more whole pulse. One uniform
    draw per device per call, whatever the data (the run replays from its seed).
    """

    name = "bp"
    random = True

    def plan(self, delta_g_s, step_s, rng=None, width_grid=None) -> UpdatePlan:
        rng = check_rng(rng, "BP")
        dg = as_delta(delta_g_s)
        step = as_step(step_s, dg.shape)
        x = np.minimum(np.abs(dg) / step, self.max_pulses)
        n = np.floor(x)
        f = x - n
        u = rng.random(dg.shape)  # one draw per device, whatever the data
        if width_grid is not None:
            f = _round_to_grid(f, u, *width_grid.levels(dg.shape))
        whole = f >= 1.0  # rounded up to a full pulse
        n = n + whole
        f = np.where(whole, 0.0, f)
        sign = np.sign(dg)
        pulses = to_pulses(n * sign, self.max_pulses)
        partial = f * sign + 0.0  # no negative zeros
        applied = (pulses + partial) * step
        return UpdatePlan(pulses=pulses, applied_target_s=applied, kept=(pulses != 0) | (partial != 0),
                          partial_frac=partial)


def _round_to_grid(f: np.ndarray, u: np.ndarray, q: np.ndarray, m_eff: np.ndarray) -> np.ndarray:
    """Unbiased stochastic rounding of fractions ``f`` in [0, 1) to {0} ∪ {m_eff, m_eff+q, ...} ∪ {1}."""
    below = f < m_eff
    lo = np.where(below, 0.0, np.clip(np.floor(f / q) * q, m_eff, f))  # clip: float guards
    hi = np.minimum(np.where(below, m_eff, lo + q), 1.0)
    p_up = np.clip((f - lo) / np.maximum(hi - lo, 1e-300), 0.0, 1.0)
    out = np.where(u < p_up, hi, lo)
    return np.where(f > 0, out, 0.0)


class EaPU(UpdateRule):
    """Error-aware probabilistic update, in pulse units (see module docstring).

    Parameters
    ----------
    delta_g_th_s:
        Noise threshold ``ΔGth`` (siemens, > 0), scalar or per device.
    max_pulses:
        Cap on pulses per device per step (>= 1).
    supra_rounding:
        ``"nearest"`` (default, ``round(ΔG/step)`` as in the project design) or
        ``"stochastic"`` (exactly unbiased) for updates at or above the quantum.
    """

    name = "eapu"
    random = True

    def __init__(
        self,
        delta_g_th_s: np.ndarray | float,
        max_pulses: int = 100,
        supra_rounding: str = "nearest",
    ):
        th = np.asarray(delta_g_th_s, dtype=np.float64)
        if not (np.all(np.isfinite(th)) and np.all(th > 0)):
            raise ValueError("delta_g_th_s must be finite and > 0")
        if supra_rounding not in ("nearest", "stochastic"):
            raise ValueError("supra_rounding must be 'nearest' or 'stochastic'")
        self.delta_g_th_s = th
        self.max_pulses = check_max_pulses(max_pulses)
        self.supra_rounding = supra_rounding

    def config(self) -> dict[str, Any]:
        th = self.delta_g_th_s
        return {
            "delta_g_th_s": float(th) if th.ndim == 0 else th.tolist(),
            "max_pulses": self.max_pulses,
            "supra_rounding": self.supra_rounding,
        }

    def quantum_pulses(self, step_s: np.ndarray | float) -> np.ndarray:
        """``n_th = clip(round(ΔGth/step), 1, max_pulses)`` (int64, per device)."""
        return quantum_pulses(self.delta_g_th_s, step_s, self.max_pulses)

    def keep_probability(self, delta_g_s: np.ndarray, step_s: np.ndarray | float) -> np.ndarray:
        """``min(1, |ΔG| / (n_th * step))``: the probability that a device is written."""
        dg = as_delta(delta_g_s)
        step = as_step(step_s, dg.shape)
        q = self.quantum_pulses(step) * step
        return np.minimum(1.0, np.abs(dg) / q)

    def plan(self, delta_g_s, step_s, rng=None, width_grid=None) -> UpdatePlan:
        rng = check_rng(rng, "EaPU")
        dg = as_delta(delta_g_s)
        step = as_step(step_s, dg.shape)
        n_th = np.broadcast_to(self.quantum_pulses(step), dg.shape)
        q = n_th * step
        mag = np.abs(dg)
        u = rng.random(dg.shape)  # one draw per device, whatever the data
        kept = (mag >= u * q) & (mag > 0)
        supra = mag >= q
        x = mag / step
        if self.supra_rounding == "nearest":
            n_supra = np.rint(x)
        else:
            # second stream of one draw per device: stochastic rounding of supra updates
            v = rng.random(dg.shape)
            fl = np.floor(x)
            n_supra = fl + (v < x - fl)
        n = np.where(supra, np.maximum(n_supra, 1.0), n_th)
        n = np.where(kept, np.sign(dg) * n, 0.0)
        pulses = to_pulses(n, self.max_pulses)
        return UpdatePlan(pulses=pulses, applied_target_s=pulses * step, kept=kept)


class Mixed(UpdateRule):
    """MADEM-style mixed precision: a digital accumulator ``χ`` per device.

    Each call: ``χ += ΔG``; ``n = trunc(χ/ε)`` with ``ε = step`` (clipped to
    ``max_pulses``); ``χ -= n·ε``. So ``χ + Σ applied == Σ ΔG`` at all times (up to
    float rounding). ``shape`` may be given now or taken from the first call.
    """

    name = "mixed"

    def __init__(self, max_pulses: int = 100, shape: tuple[int, ...] | None = None):
        self.max_pulses = check_max_pulses(max_pulses)
        self.chi_s: np.ndarray | None = None
        if shape is not None:
            self.chi_s = np.zeros(tuple(shape), dtype=np.float64)

    def config(self) -> dict[str, Any]:
        return {"max_pulses": self.max_pulses}

    def plan(self, delta_g_s, step_s, rng=None, width_grid=None) -> UpdatePlan:
        dg = as_delta(delta_g_s)
        step = as_step(step_s, dg.shape)
        if self.chi_s is None:
            self.chi_s = np.zeros(dg.shape, dtype=np.float64)
        elif self.chi_s.shape != dg.shape:
            raise ValueError(f"Mixed accumulator has shape {self.chi_s.shape}, ΔG has {dg.shape}")
        chi = self.chi_s + dg
        pulses = to_pulses(np.trunc(chi / step), self.max_pulses)
        applied = pulses * step
        self.chi_s = chi - applied
        return UpdatePlan(pulses=pulses, applied_target_s=applied, kept=pulses != 0)

    def state_dict(self) -> dict[str, Any]:
        return {"chi_s": None if self.chi_s is None else self.chi_s.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        chi = state.get("chi_s")
        self.chi_s = None if chi is None else np.array(chi, dtype=np.float64, copy=True)

    def reset(self) -> None:
        if self.chi_s is not None:
            self.chi_s = np.zeros_like(self.chi_s)


class Manhattan(UpdateRule):
    """One pulse of ``sign(ΔG)`` where ``|ΔG| > threshold_s``; magnitude ignored."""

    name = "manhattan"

    def __init__(self, threshold_s: np.ndarray | float = 0.0):
        th = np.asarray(threshold_s, dtype=np.float64)
        if not (np.all(np.isfinite(th)) and np.all(th >= 0)):
            raise ValueError("threshold_s must be finite and >= 0")
        self.threshold_s = th

    def config(self) -> dict[str, Any]:
        th = self.threshold_s
        return {"threshold_s": float(th) if th.ndim == 0 else th.tolist()}

    def plan(self, delta_g_s, step_s, rng=None, width_grid=None) -> UpdatePlan:
        dg = as_delta(delta_g_s)
        step = as_step(step_s, dg.shape)
        pulses = np.where(np.abs(dg) > self.threshold_s, np.sign(dg), 0.0).astype(np.int64)
        return make_plan(pulses, step)


class Stochastic(PulseCapped):
    """Stochastic rounding of ``ΔG/step`` to whole pulses: ``floor(x) + Bernoulli(frac(x))``.

    Unbiased (``E[pulses] = ΔG/step`` before the ``max_pulses`` clip); no
    noise-derived threshold. One uniform draw per device per call.
    """

    name = "stochastic"
    random = True

    def plan(self, delta_g_s, step_s, rng=None, width_grid=None) -> UpdatePlan:
        rng = check_rng(rng, "Stochastic")
        dg = as_delta(delta_g_s)
        step = as_step(step_s, dg.shape)
        x = dg / step
        u = rng.random(dg.shape)
        fl = np.floor(x)
        n = fl + (u < x - fl)
        return make_plan(to_pulses(n, self.max_pulses), step)


# --------------------------------------------------------------------------- factory

RULES: dict[str, type[UpdateRule]] = {
    cls.name: cls for cls in (Float, BP, BPPulses, EaPU, Mixed, Manhattan, Stochastic)
}


def make_rule(name: str, **kwargs: Any) -> UpdateRule:
    """Build a rule by name (case-insensitive): ``make_rule("eapu", delta_g_th_s=1e-6)``."""
    key = str(name).strip().lower()
    if key not in RULES:
        raise ValueError(f"unknown update rule {name!r}; valid names: {', '.join(sorted(RULES))}")
    try:
        return RULES[key](**kwargs)
    except TypeError as exc:
        raise TypeError(f"bad arguments for update rule {key!r}: {exc}") from exc
