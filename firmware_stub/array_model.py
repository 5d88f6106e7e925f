"""Vectorised physics of the emulated memristor (1T1R RRAM) crossbar array.

The emulated firmware drives this model instead of a real board, so calibration and
training meet the troubles of a real HfOx/TaOx array (shared docs/DEVICE_MODEL.md):
soft-bounds SET/RESET steps with asymmetry, device-to-device and cycle-to-cycle
spread, a persistent write error at each write event, logarithmic relaxation, read noise,
stuck devices, wear, pulse amplitude/width dependence and energy/time bookkeeping on
a virtual clock.  Every operation is vectorised over devices; the only Python loop is
over the pulse index of a batch.

State is held in flat arrays of length ``rows*cols`` (flat index = row*cols + col).

Random streams (``np.random.SeedSequence(seed).spawn(4)``), so that one kind of
operation never shifts the draws of another:

0. fixed per-device factors (alpha_set, alpha_reset, g_max, stuck flags, initial G),
   drawn once in the constructor, in that order, with numpy's exact normals;
1. cycle-to-cycle noise of every pulse;
2. write events (the write error ``sigma_w*xi`` added to G, then the relaxation draw
   ``xi_r``; the initial ``xi_r`` too);
3. read noise (reads and VMM).

Dynamic noise (streams 1-3) comes from :class:`firmware_stub.normal_source.NormalSource`
(a 16-bit inverse-CDF table by default; ``exact_normals=True`` for numpy's ziggurat).

Wear law (N = pulses received by the device, N_end = ``endurance_pulses``,
L = ``wear_window_loss``): no effect while N <= N_end; for N_end < N < 2 N_end the
upper bound shrinks linearly, ``g_hi = g_max_ij - L*min(1, (N-N_end)/N_end)*(g_max_ij-g_min)``,
so the device has lost L of its window at 2 N_end; the pulse numbered 2 N_end is the
device's last one: from then on it is stuck at its current G.  The soft-bounds ``x``
is taken on the narrowed window, and a device above a narrowed bound is clipped to it
when pulsed.

Write error (shared DEVICE_MODEL.md): every write event (one or more pulses sent to a
device in one batch, a forming pulse, a DC sweep step) adds ``sigma_w*xi`` to the stored
``G``, once per event whatever its size, clipped into the device's window: it is part
of the new state, so unverified writes random-walk.  Frozen devices (stuck, worn out,
unformed) take no write error.  The relaxation draw ``xi_r`` and ``t_w`` are redrawn
at every event: relaxation is a read-visible offset that does not accumulate.

Reads return ``max(G + relax(t), 0) * (1 + read_noise_rel*xi)`` (a device cannot
conduct negatively); stuck devices show no relaxation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firmware_stub.array_dc import ArrayDcMixin
from firmware_stub.array_reads import ArrayReadMixin
from firmware_stub.array_truth import ArrayTruthMixin
from firmware_stub.device_params import DeviceParams
from firmware_stub.normal_source import (
    STREAM_FIXED,
    STREAM_PULSE,
    STREAM_READ,
    STREAM_WRITE,
    NormalSource,
)
from firmware_stub.pulse_energy import (
    ArrayCounters,
    PulseOutcome,
    check_profile_polarity,
    pulse_scale,
    write_periphery_energy_j,
)

_ALPHA_FLOOR_REL = 0.05  # per-device alpha never below 5 % of nominal


def _descending_order(n_abs: np.ndarray) -> np.ndarray | None:
    """Stable permutation sorting pulse counts in descending order; None if all are equal."""
    top = int(n_abs.max())
    if int(n_abs.min()) == top:
        return None
    key = -n_abs.astype(np.int16) if top < 2**15 else -n_abs  # int16 sorts by radix, 3x faster
    return np.argsort(key, kind="stable")


def _as_selector(sorted_idx: np.ndarray) -> slice | np.ndarray:
    """A slice (numpy views, no gather) when sorted unique indices form one contiguous run."""
    if sorted_idx.size and sorted_idx[-1] - sorted_idx[0] + 1 == sorted_idx.size:
        return slice(int(sorted_idx[0]), int(sorted_idx[-1]) + 1)
    return sorted_idx


@dataclass(frozen=True)
class _PhaseArrays:
    """Working arrays of one pulse phase, in phase order; ``stuck`` and ``n0`` only when wear applies,
    ``inv_window`` None when the window is folded into ``coef`` (gamma == 1, no wear)."""

    g: np.ndarray
    g_max: np.ndarray
    coef: np.ndarray
    inv_window: np.ndarray | None
    stuck: np.ndarray | None
    n0: np.ndarray | None


class MemristorArray(ArrayReadMixin, ArrayDcMixin, ArrayTruthMixin):
    """The emulated array: fixed per-device factors, dynamic state, virtual clock.

    Reads and VMM (:mod:`firmware_stub.array_reads`), forming and DC sweeps
    (:mod:`firmware_stub.array_dc`), ground truth and snapshots (:mod:`firmware_stub.array_truth`)
    are mixed in from their own modules; this one holds the state and the pulse writes.
    """

    def __init__(self, params: DeviceParams, rows: int, cols: int, seed: int, *, exact_normals: bool = False):
        if rows <= 0 or cols <= 0:
            raise ValueError(f"array shape must be positive, got {rows}x{cols}")
        self.params = params
        self.rows, self.cols, self.seed = int(rows), int(cols), int(seed)
        self.n_devices = self.rows * self.cols
        streams = np.random.SeedSequence(self.seed).spawn(4)
        self._rngs = [np.random.Generator(np.random.PCG64(s)) for s in streams]
        self._noise = {k: NormalSource(self._rngs[k], exact_normals)
                       for k in (STREAM_PULSE, STREAM_WRITE, STREAM_READ)}
        self._draw_fixed_factors(self._rngs[STREAM_FIXED])
        self.xi_r = self._noise[STREAM_WRITE].affine(self.n_devices)
        self.t_w = np.zeros(self.n_devices)
        self.n_pulses = np.zeros(self.n_devices, dtype=np.int64)
        self.clock_sec = 0.0
        self.counters = ArrayCounters()
        self._scratch: tuple[np.ndarray, np.ndarray] | None = None

    # ---- construction --------------------------------------------------------------
    def _draw_fixed_factors(self, rng: np.random.Generator) -> None:
        p, n = self.params, self.n_devices
        self.alpha_set = self._spread(rng, p.alpha_set_s, p.sigma_d2d)
        self.alpha_reset = self._spread(rng, p.alpha_reset_s, p.sigma_d2d)
        g_max = p.g_max_s * (1.0 + p.sigma_bound * rng.standard_normal(n))
        self.g_max = np.maximum(g_max, p.g_min_s + 1e-3 * (p.g_max_s - p.g_min_s))  # a window, however small
        u = rng.random(n)
        self.stuck_factory = u < p.stuck_fraction
        stuck_high = u < p.stuck_fraction * p.stuck_high_share
        g0 = p.g_init_s * (1.0 + p.sigma_init_rel * rng.standard_normal(n))
        g0 = np.clip(g0, p.g_min_s, self.g_max)
        g0[self.stuck_factory] = p.g_min_s
        g0[stuck_high] = self.g_max[stuck_high]
        self.g = g0
        self.stuck = self.stuck_factory.copy()  # grows when devices wear out
        self._draw_forming()
        self.refresh_derived()

    def _draw_forming(self) -> None:
        """Unformed devices and forming voltages, from a fifth stream so the other draws do not move."""
        p, n = self.params, self.n_devices
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(4,)))
        self.v_form = p.v_form_v * (1.0 + p.sigma_form_rel * rng.standard_normal(n))
        self.unformed = (rng.random(n) < p.unformed_fraction) & ~self.stuck_factory
        self.g[self.unformed] = p.g_unformed_s

    def _spread(self, rng: np.random.Generator, nominal: float, sigma: float) -> np.ndarray:
        alpha = nominal * (1.0 + sigma * rng.standard_normal(self.n_devices))
        return np.maximum(alpha, _ALPHA_FLOOR_REL * nominal)

    def refresh_derived(self) -> None:
        """Recompute the cached per-device gains; call after editing alpha, g_max or stuck by hand."""
        self.inv_window = 1.0 / (self.g_max - self.params.g_min_s)
        self._any_unformed = bool(self.unformed.any())
        mobile = ~(self.stuck | self.unformed)
        # alpha of devices that move (0 if stuck), and alpha / window for the gamma == 1 fast path
        self._alpha_mobile = {+1: self.alpha_set * mobile, -1: self.alpha_reset * mobile}
        self._gain = {k: a * self.inv_window for k, a in self._alpha_mobile.items()}

    # ---- clock and counters ----------------------------------------------------------
    def advance(self, dt_sec: float) -> None:
        """Move the virtual clock forward (a wait on the board)."""
        if not dt_sec >= 0:
            raise ValueError(f"cannot advance the clock by {dt_sec} s")
        self.clock_sec += float(dt_sec)

    def reset_counters(self) -> None:
        self.counters = ArrayCounters()

    @property
    def max_pulses_per_device(self) -> int:
        return int(self.n_pulses.max())

    @property
    def worn_out(self) -> np.ndarray:
        """Devices stuck by wear (not by fabrication)."""
        return self.stuck & ~self.stuck_factory

    # ---- writes --------------------------------------------------------------------
    def validate_pulse_batch(self, flat_idx, counts) -> tuple[np.ndarray, np.ndarray]:
        """``flat_idx`` sorted unique in range, ``counts`` non-zero, same length (as int64)."""
        idx = np.asarray(flat_idx, dtype=np.int64).reshape(-1)
        counts = np.asarray(counts, dtype=np.int64).reshape(-1)
        if idx.shape != counts.shape:
            raise ValueError(f"{idx.size} indices but {counts.size} counts")
        if idx.size:
            if idx[0] < 0 or idx[-1] >= self.n_devices or np.any(idx[1:] <= idx[:-1]):
                raise ValueError("flat_idx must be sorted, unique and inside the array")
            if not np.all(counts):
                raise ValueError("pulse counts must be non-zero")
        return idx, counts

    def _phase_duration_sec(self, n_steps: int, width_sec: float) -> float:
        """Command latency plus one pulse slot per pulse index (0 if the phase is empty)."""
        if n_steps <= 0:
            return 0.0
        return self.params.t_command_sec + n_steps * (width_sec + self.params.t_pulse_gap_sec)

    def _last_slot_trim_sec(self, n_abs: np.ndarray, last_ratio: np.ndarray | None, width_sec: float) -> float:
        """How much shorter than a full pulse a phase's last pulse slot is.

        Every slot but the last holds a full pulse of the device with the most pulses; the
        last slot lasts as long as the longest last pulse of the devices with that many.
        """
        if last_ratio is None or n_abs.size == 0:
            return 0.0
        top = n_abs == n_abs.max()
        return (1.0 - float(last_ratio[top].max())) * width_sec

    def write_batch_duration_sec(self, counts: np.ndarray, set_width_sec: float, reset_width_sec: float,
                                 last_width_sec: np.ndarray | None = None) -> float:
        """Duration of a pulse batch: SET phase then RESET phase, each if present (partial last pulses shorter)."""
        total = 0.0
        for polarity, width_sec in ((+1, set_width_sec), (-1, reset_width_sec)):
            part = counts > 0 if polarity > 0 else counts < 0
            if not part.any():
                continue
            n_abs = np.abs(counts[part])
            ratio = None if last_width_sec is None else np.asarray(last_width_sec)[part] / width_sec
            total += (self._phase_duration_sec(int(n_abs.max()), width_sec)
                      - self._last_slot_trim_sec(n_abs, ratio, width_sec))
        return total

    def apply_pulses(self, flat_idx, counts, set_profile, reset_profile,
                     last_width_sec: np.ndarray | None = None) -> PulseOutcome:
        """Apply ``counts[i]`` pulses to device ``flat_idx[i]`` (+n SET, -n RESET).

        The SET phase runs first, then the RESET phase; within a phase pulse index k is
        applied to every device with ``|count| > k`` at once.  One call is one write
        event for every touched device: its write error is added to G, its relaxation
        draw is redrawn and ``t_w`` is set to the clock at the batch end.

        ``last_width_sec`` (optional, one per device, seconds, in (0, profile width]): the
        width of each device's last pulse, a width-modulated partial pulse of the same
        write event.  Its step scales with its width (``pulse_scale``: ``width/width_nominal``;
        the cycle-to-cycle spread scales with it) and its energy uses its own width.
        """
        idx, counts = self.validate_pulse_batch(flat_idx, counts)
        profiles = {+1: check_profile_polarity(set_profile, +1), -1: check_profile_polarity(reset_profile, -1)}
        last_w = None
        if last_width_sec is not None:
            last_w = np.asarray(last_width_sec, dtype=np.float64).reshape(-1)
            if last_w.shape != counts.shape or not np.all((last_w > 0) & np.isfinite(last_w)):
                raise ValueError("last_width_sec must hold one positive width per device")
        pulses, energy, duration = {+1: 0, -1: 0}, 0.0, 0.0
        for polarity, part in self._split_by_polarity(counts):
            amplitude_v, width_sec = profiles[polarity]
            n_abs = counts[part] if polarity > 0 else -counts[part]
            ratio = None
            if last_w is not None:
                ratio = last_w[part] / width_sec
                if ratio.max() > 1 + 1e-9:
                    raise ValueError("a last pulse is longer than its profile's width")
                ratio = None if ratio.min() >= 1.0 else np.minimum(ratio, 1.0)
            e_phase, pulses[polarity], n_steps = self._run_phase(idx[part], n_abs, polarity, amplitude_v, width_sec,
                                                                 ratio)
            energy += e_phase
            duration += self._phase_duration_sec(n_steps, width_sec) - self._last_slot_trim_sec(n_abs, ratio, width_sec)
        periphery = write_periphery_energy_j(self.params, idx.size, [(profiles[k][0], pulses[k]) for k in (+1, -1)])
        outcome = PulseOutcome(pulses[+1], pulses[-1], energy + periphery, duration, periphery)
        self.book_write_batch(outcome, idx.size)
        self._redraw_write_event(idx)
        if self._any_unformed:  # the window clip lifted them to g_min: an unformed filament stays absent
            hit = idx[self.unformed[idx]]
            self.g[hit] = self.params.g_unformed_s
        return outcome

    @staticmethod
    def _split_by_polarity(counts: np.ndarray) -> list[tuple[int, slice | np.ndarray]]:
        """(polarity, positions) of the SET and the RESET part of a batch; empty parts left out."""
        is_set = counts > 0
        n_set = int(np.count_nonzero(is_set))
        if n_set == counts.size:
            return [(+1, slice(None))] if n_set else []
        if n_set == 0:
            return [(-1, slice(None))]
        # integer positions: gathers with them are several times faster than with a boolean mask
        return [(+1, np.flatnonzero(is_set)), (-1, np.flatnonzero(~is_set))]

    def book_write_batch(self, outcome: PulseOutcome, n_devices: int) -> None:
        """Counters and clock of a finished pulse batch (shared with the reference loop)."""
        c = self.counters
        c.set_pulses_total += outcome.set_pulses
        c.reset_pulses_total += outcome.reset_pulses
        c.pulses_total += outcome.set_pulses + outcome.reset_pulses
        c.write_events_total += int(n_devices)
        self._book_write_energy(outcome.energy_j - outcome.periphery_energy_j, outcome.periphery_energy_j)
        self.clock_sec += outcome.duration_sec

    def _book_write_energy(self, device_j: float, periphery_j: float = 0.0) -> None:
        c = self.counters
        c.write_device_energy_j += device_j
        c.write_periphery_energy_j += periphery_j
        c.write_energy_j += device_j + periphery_j

    def _redraw_write_event(self, idx: np.ndarray) -> None:
        """One write event on each device ``idx``: persistent write error into G, fresh relaxation draw.

        The error is drawn for every touched device (so the stream does not depend on which are
        frozen) and lands only on devices that move, clipped into their (wear-narrowed) window.
        """
        if idx.size == 0:
            return
        p = self.params
        sel = _as_selector(idx)
        noise = self._noise[STREAM_WRITE]
        error = noise.affine(idx.size, 0.0, p.sigma_w_s)
        error *= ~self._frozen()[sel]
        g = self.g[sel] + error
        n_pulses = self.n_pulses[sel]
        if n_pulses.size and int(n_pulses.max()) > p.endurance_pulses:
            hi, _ = self._worn_bounds(self.g_max[sel], n_pulses, self.stuck[sel])
        else:
            hi = self.g_max[sel]
        self.g[sel] = np.clip(g, p.g_min_s, np.maximum(hi, p.g_min_s))
        if isinstance(sel, slice):  # draw straight into the state array
            noise.affine(idx.size, out=self.xi_r[sel])
        else:
            self.xi_r[sel] = noise.affine(idx.size)
        self.t_w[sel] = self.clock_sec

    def _run_phase(self, idx: np.ndarray, n_abs: np.ndarray, polarity: int, amplitude_v: float,
                   width_sec: float, last_ratio: np.ndarray | None = None) -> tuple[float, int, int]:
        """All pulses of one polarity: returns (resistive energy, pulses, max pulses per device).

        Devices are ordered by descending count so that the devices still pulsed at
        pulse index k are a prefix of the working arrays; those whose LAST pulse is at
        index k are the tail ``[n_active[k+1], n_active[k])`` of that prefix, where
        ``last_ratio`` (width of the last pulse / profile width, per device) scales
        their step and energy.
        """
        p = self.params
        order = _descending_order(n_abs)
        if order is None:
            sel = _as_selector(idx)
        else:
            idx, n_abs = idx[order], n_abs[order]
            sel = idx
            if last_ratio is not None:
                last_ratio = last_ratio[order]
        n_steps = int(n_abs[0])
        n_active = np.searchsorted(-n_abs, -np.arange(n_steps), side="left")  # devices with |count| > k
        gamma = p.gamma_set if polarity > 0 else p.gamma_reset
        wear = int(self.n_pulses[sel].max()) + n_steps > p.endurance_pulses
        w = self._phase_arrays(sel, polarity, wear, folded=not wear and gamma == 1.0)
        g_sums = self._pulse_steps(w, n_active, polarity, gamma, pulse_scale(p, amplitude_v, width_sec), last_ratio)
        if not isinstance(sel, slice):
            self.g[sel] = w.g
        self.n_pulses[sel] += n_abs
        if wear:
            self.stuck[sel] = w.stuck
            self.refresh_derived()
        return amplitude_v**2 * width_sec / 2.0 * g_sums, int(n_abs.sum()), n_steps

    def _phase_arrays(self, sel: slice | np.ndarray, polarity: int, wear: bool, folded: bool) -> _PhaseArrays:
        """The working arrays of one phase on the devices ``sel`` (in phase order)."""
        g = self.g[sel]  # a view when sel is a slice: updated in place
        if folded:  # alpha/window precomputed, no wear bounds
            coef, inv_window = self._gain[polarity][sel], None
        else:  # a copy: wear zeroes the coefficient of devices that wear out
            coef, inv_window = np.array(self._alpha_mobile[polarity][sel]), self.inv_window[sel]
        return _PhaseArrays(g=g, g_max=self.g_max[sel], coef=coef, inv_window=inv_window,
                            stuck=np.array(self.stuck[sel]) if wear else None,
                            n0=np.array(self.n_pulses[sel]) if wear else None)

    def _pulse_steps(self, w: _PhaseArrays, n_active: np.ndarray, polarity: int, gamma: float, scale: float,
                     last_ratio: np.ndarray | None) -> float:
        """Apply pulse index k to the first ``n_active[k]`` devices, for every k; returns the sum over
        pulses of (G_before + G_after) * (pulse width / profile width)."""
        p = self.params
        wear = w.stuck is not None
        noise = self._noise[STREAM_PULSE]
        step, factor = self._work_buffers(w.g.size)
        g_sums = 0.0
        ends = n_active.tolist()[1:] + [0]  # devices still pulsed after index k
        for k, m in enumerate(n_active.tolist()):
            gk, sk = w.g[:m], step[:m]
            if wear:
                hi, inv = self._worn_bounds(w.g_max[:m], w.n0[:m] + (k + 1), w.stuck[:m])
                np.minimum(gk, hi, out=gk)
            else:
                hi, inv = w.g_max[:m], (None if w.inv_window is None else w.inv_window[:m])
            tail = None if last_ratio is None else slice(ends[k], m)  # devices on their last pulse
            g_sums += gk.sum() if tail is None else self._width_weighted_sum(gk, tail, last_ratio)
            anchor = hi if polarity > 0 else p.g_min_s
            self._soft_bound_factor(gk, anchor, inv, gamma, out=sk)
            sk *= w.coef[:m]
            sk *= noise.affine(m, scale, scale * p.sigma_c2c, out=factor[:m])
            if tail is not None:
                sk[tail] *= last_ratio[tail]
            gk += sk
            np.clip(gk, p.g_min_s, hi, out=gk)
            g_sums += gk.sum() if tail is None else self._width_weighted_sum(gk, tail, last_ratio)
            if wear:
                self._stick_worn(w.n0[:m] + (k + 1), w.stuck[:m], w.coef[:m])
        return g_sums

    @staticmethod
    def _width_weighted_sum(g: np.ndarray, tail: slice, ratio: np.ndarray) -> float:
        """Sum of ``g`` with the devices of ``tail`` weighted by their last pulse's width ratio."""
        return float(g.sum() - g[tail].sum() + g[tail] @ ratio[tail])

    def _work_buffers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Scratch step (float64) and noise factor (float32) arrays, kept between calls.

        Fresh megabyte arrays cost page faults on every call; float32 noise halves the lookup traffic.
        """
        if self._scratch is None:
            self._scratch = (np.empty(self.n_devices), np.empty(self.n_devices, dtype=np.float32))
        return self._scratch[0][:n], self._scratch[1][:n]

    @staticmethod
    def _soft_bound_factor(g: np.ndarray, anchor, inv: np.ndarray | None, gamma: float, out: np.ndarray) -> None:
        """``sign(d) * (|d|*inv)**gamma``, ``d = anchor - g``: (1-x)**gamma for SET (anchor = upper
        bound), -x**gamma for RESET (anchor = g_min).

        With ``inv`` None the division by the window is folded into the caller's gain (gamma == 1).
        """
        np.subtract(anchor, g, out=out)
        if inv is not None:
            out *= inv
        if gamma != 1.0:
            magnitude = np.abs(out)
            np.power(magnitude, gamma, out=magnitude)
            np.copysign(magnitude, out, out=out)

    def _worn_bounds(self, g_max: np.ndarray, pulse_number: np.ndarray,
                     stuck: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Wear-narrowed upper bound and its inverse window (stuck devices keep g_max)."""
        p = self.params
        frac = np.clip((pulse_number - p.endurance_pulses) / p.endurance_pulses, 0.0, 1.0)
        hi = g_max - p.wear_window_loss * frac * (g_max - p.g_min_s)
        hi = np.where(stuck, g_max, hi)
        floor = 1e-9 * (p.g_max_s - p.g_min_s)
        return hi, 1.0 / np.maximum(hi - p.g_min_s, floor)

    def _stick_worn(self, pulse_number: np.ndarray, stuck: np.ndarray, coef: np.ndarray) -> None:
        worn = pulse_number >= 2 * self.params.endurance_pulses
        stuck |= worn
        coef[worn] = 0.0

    def rng(self, stream: str) -> np.random.Generator:
        """The generator of one stream ('pulse', 'write' or 'read'), for alternative engines."""
        return self._rngs[{"pulse": STREAM_PULSE, "write": STREAM_WRITE, "read": STREAM_READ}[stream]]
