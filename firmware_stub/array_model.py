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

Dynamic noise (streams 1-3) comes from :class:`NormalSource`: by default a 16-bit
inverse-CDF table (65536 equiprobable normal quantiles, exact unit variance,
|xi| <= 4.3), about three times faster per deviate than numpy's ziggurat here; pass
``exact_normals=True`` for the ziggurat.

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

import functools
import hashlib
import statistics
from dataclasses import dataclass

import numpy as np

from firmware_stub.device_params import DeviceParams

_STREAM_FIXED, _STREAM_PULSE, _STREAM_WRITE, _STREAM_READ = range(4)
_ALPHA_FLOOR_REL = 0.05  # per-device alpha never below 5 % of nominal


@dataclass(frozen=True)
class PulseOutcome:
    """Result of one pulse batch: ``energy_j`` is the whole write energy, ``periphery_energy_j`` its
    periphery part (fixed energy per device written plus line charging); the rest went through the devices."""

    set_pulses: int
    reset_pulses: int
    energy_j: float
    duration_s: float
    periphery_energy_j: float = 0.0


@dataclass
class ArrayCounters:
    """Running totals since construction (or :meth:`MemristorArray.reset_counters`).

    ``write_events_total`` counts device write events (one per touched device per
    pulse batch); ``write_energy_j`` is ``write_device_energy_j + write_periphery_energy_j``;
    ``read_energy_j`` covers both cell reads and VMM (``V^2 G t_read`` per cell); converter
    energies are booked per conversion (docs/ENERGY.md).
    """

    pulses_total: int = 0
    set_pulses_total: int = 0
    reset_pulses_total: int = 0
    write_events_total: int = 0
    write_energy_j: float = 0.0
    write_device_energy_j: float = 0.0
    write_periphery_energy_j: float = 0.0
    read_energy_j: float = 0.0
    adc_energy_j: float = 0.0
    adc_conversions_total: int = 0
    dac_energy_j: float = 0.0
    dac_conversions_total: int = 0
    cells_read_total: int = 0
    vmm_calls_total: int = 0
    vmm_vectors_total: int = 0


@functools.lru_cache(maxsize=1)
def _unit_normal_table() -> np.ndarray:
    """65536 equiprobable quantiles of N(0, 1), rescaled to exactly unit variance."""
    levels = 1 << 16
    nd = statistics.NormalDist()
    half = np.array([nd.inv_cdf((k + 0.5) / levels) for k in range(levels // 2, levels)])
    table = np.concatenate([-half[::-1], half])  # symmetric: mean exactly 0
    table /= np.sqrt(np.mean(table**2))
    table.flags.writeable = False
    return table


class NormalSource:
    """Normal deviates ``a + b*xi`` from one random stream, as float64 (or the dtype of ``out``).

    Fast mode takes 16 raw bits per deviate and looks up ``a + b*q_k`` in a cached
    table of the 65536 quantiles ``q_k``; exact mode uses numpy's float32 ziggurat.
    """

    _MAX_TABLES = 32

    def __init__(self, rng: np.random.Generator, exact: bool = False):
        self.rng = rng
        self.exact = exact
        self._tables: dict[tuple[float, float, str], np.ndarray] = {}

    def _table(self, a: float, b: float, dtype: np.dtype) -> np.ndarray:
        key = (a, b, dtype.str)
        table = self._tables.get(key)
        if table is None:
            if len(self._tables) >= self._MAX_TABLES:
                self._tables.clear()
            table = self._tables[key] = (a + b * _unit_normal_table()).astype(dtype)
        return table

    def _uint16(self, n: int) -> np.ndarray:
        """n uniform 16-bit integers: four per raw 64-bit output of the bit generator."""
        return self.rng.bit_generator.random_raw(-(-n // 4)).view(np.uint16)[:n]

    def affine(self, shape, a: float = 0.0, b: float = 1.0, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.empty(shape)
        if self.exact:
            xi = self.rng.standard_normal(out.shape, dtype=np.float32)
            np.multiply(xi, b, out=out)
            out += a
            return out
        u = self._uint16(out.size).reshape(out.shape)
        return np.take(self._table(a, b, out.dtype), u, out=out, mode="wrap")  # u < table size: no wrap


def pulse_scale(params: DeviceParams, amplitude_v: float, width_s: float) -> float:
    """Step multiplier of a pulse relative to the nominal pulse of its polarity.

    ``((|V|-|Vth|)/(|Vnom|-|Vth|))**amplitude_exponent * (width/width_nominal)``; zero
    at or below threshold.  The polarity is the sign of ``amplitude_v``.
    """
    if amplitude_v > 0:
        v_th, v_nom = params.v_set_threshold_v, params.v_set_nominal_v
    else:
        v_th, v_nom = params.v_reset_threshold_v, params.v_reset_nominal_v
    over_v = abs(amplitude_v) - abs(v_th)
    if over_v <= 0:
        return 0.0
    ratio = over_v / (abs(v_nom) - abs(v_th))
    return ratio**params.amplitude_exponent * (width_s / params.width_nominal_s)


def write_periphery_energy_j(params: DeviceParams, n_devices: int, pulses_at: list[tuple[float, int]]) -> float:
    """Periphery energy of a write event on ``n_devices`` devices: a fixed energy per device
    written plus ``C V^2`` line charging per pulse (``pulses_at``: (amplitude_v, pulses) pairs)."""
    line = sum(amplitude_v**2 * n for amplitude_v, n in pulses_at)
    return params.write_periphery_energy_j * n_devices + params.line_capacitance_f * line


def check_profile_polarity(profile: tuple[float, float], polarity: int) -> tuple[float, float]:
    """``(amplitude_v, width_s)`` as floats; SET amplitude must be > 0, RESET < 0."""
    amplitude_v, width_s = (float(x) for x in profile)
    if polarity > 0 and not amplitude_v > 0:
        raise ValueError(f"SET amplitude must be > 0 V, got {amplitude_v}")
    if polarity < 0 and not amplitude_v < 0:
        raise ValueError(f"RESET amplitude must be < 0 V, got {amplitude_v}")
    if not width_s > 0:
        raise ValueError(f"pulse width must be > 0 s, got {width_s}")
    return amplitude_v, width_s


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


class MemristorArray:
    """The emulated array: fixed per-device factors, dynamic state, virtual clock."""

    def __init__(self, params: DeviceParams, rows: int, cols: int, seed: int, *, exact_normals: bool = False):
        if rows <= 0 or cols <= 0:
            raise ValueError(f"array shape must be positive, got {rows}x{cols}")
        self.params = params
        self.rows, self.cols, self.seed = int(rows), int(cols), int(seed)
        self.n_devices = self.rows * self.cols
        streams = np.random.SeedSequence(self.seed).spawn(4)
        self._rngs = [np.random.Generator(np.random.PCG64(s)) for s in streams]
        self._noise = {k: NormalSource(self._rngs[k], exact_normals)
                       for k in (_STREAM_PULSE, _STREAM_WRITE, _STREAM_READ)}
        self._draw_fixed_factors(self._rngs[_STREAM_FIXED])
        self.xi_r = self._noise[_STREAM_WRITE].affine(self.n_devices)
        self.t_w = np.zeros(self.n_devices)
        self.n_pulses = np.zeros(self.n_devices, dtype=np.int64)
        self.clock_s = 0.0
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
    def advance(self, dt_s: float) -> None:
        """Move the virtual clock forward (a wait on the board)."""
        if not dt_s >= 0:
            raise ValueError(f"cannot advance the clock by {dt_s} s")
        self.clock_s += float(dt_s)

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

    def _phase_duration_s(self, n_steps: int, width_s: float) -> float:
        """Command latency plus one pulse slot per pulse index (0 if the phase is empty)."""
        if n_steps <= 0:
            return 0.0
        return self.params.t_command_s + n_steps * (width_s + self.params.t_pulse_gap_s)

    def _last_slot_trim_s(self, n_abs: np.ndarray, last_ratio: np.ndarray | None, width_s: float) -> float:
        """How much shorter than a full pulse a phase's last pulse slot is.

        Every slot but the last holds a full pulse of the device with the most pulses; the
        last slot lasts as long as the longest last pulse of the devices with that many.
        """
        if last_ratio is None or n_abs.size == 0:
            return 0.0
        top = n_abs == n_abs.max()
        return (1.0 - float(last_ratio[top].max())) * width_s

    def write_batch_duration_s(self, counts: np.ndarray, set_width_s: float, reset_width_s: float,
                               last_width_s: np.ndarray | None = None) -> float:
        """Duration of a pulse batch: SET phase then RESET phase, each if present (partial last pulses shorter)."""
        total = 0.0
        for polarity, width_s in ((+1, set_width_s), (-1, reset_width_s)):
            part = counts > 0 if polarity > 0 else counts < 0
            if not part.any():
                continue
            n_abs = np.abs(counts[part])
            ratio = None if last_width_s is None else np.asarray(last_width_s)[part] / width_s
            total += (self._phase_duration_s(int(n_abs.max()), width_s)
                      - self._last_slot_trim_s(n_abs, ratio, width_s))
        return total

    def apply_pulses(self, flat_idx, counts, set_profile, reset_profile,
                     last_width_s: np.ndarray | None = None) -> PulseOutcome:
        """Apply ``counts[i]`` pulses to device ``flat_idx[i]`` (+n SET, -n RESET).

        The SET phase runs first, then the RESET phase; within a phase pulse index k is
        applied to every device with ``|count| > k`` at once.  One call is one write
        event for every touched device: its write error is added to G, its relaxation
        draw is redrawn and ``t_w`` is set to the clock at the batch end.

        ``last_width_s`` (optional, one per device, seconds, in (0, profile width]): the
        width of each device's last pulse, a width-modulated partial pulse of the same
        write event.  Its step scales with its width (``pulse_scale``: ``width/width_nominal``;
        the cycle-to-cycle spread scales with it) and its energy uses its own width.
        """
        idx, counts = self.validate_pulse_batch(flat_idx, counts)
        profiles = {+1: check_profile_polarity(set_profile, +1), -1: check_profile_polarity(reset_profile, -1)}
        last_w = None
        if last_width_s is not None:
            last_w = np.asarray(last_width_s, dtype=np.float64).reshape(-1)
            if last_w.shape != counts.shape or not np.all((last_w > 0) & np.isfinite(last_w)):
                raise ValueError("last_width_s must hold one positive width per device")
        pulses, energy, duration = {+1: 0, -1: 0}, 0.0, 0.0
        for polarity, part in self._split_by_polarity(counts):
            amplitude_v, width_s = profiles[polarity]
            n_abs = counts[part] if polarity > 0 else -counts[part]
            ratio = None
            if last_w is not None:
                ratio = last_w[part] / width_s
                if ratio.max() > 1 + 1e-9:
                    raise ValueError("a last pulse is longer than its profile's width")
                ratio = None if ratio.min() >= 1.0 else np.minimum(ratio, 1.0)
            e_phase, pulses[polarity], n_steps = self._run_phase(idx[part], n_abs, polarity, amplitude_v, width_s,
                                                                 ratio)
            energy += e_phase
            duration += self._phase_duration_s(n_steps, width_s) - self._last_slot_trim_s(n_abs, ratio, width_s)
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
        self.clock_s += outcome.duration_s

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
        noise = self._noise[_STREAM_WRITE]
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
        self.t_w[sel] = self.clock_s

    def _run_phase(self, idx: np.ndarray, n_abs: np.ndarray, polarity: int, amplitude_v: float,
                   width_s: float, last_ratio: np.ndarray | None = None) -> tuple[float, int, int]:
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
        g_sums = self._pulse_steps(w, n_active, polarity, gamma, pulse_scale(p, amplitude_v, width_s), last_ratio)
        if not isinstance(sel, slice):
            self.g[sel] = w.g
        self.n_pulses[sel] += n_abs
        if wear:
            self.stuck[sel] = w.stuck
            self.refresh_derived()
        return amplitude_v**2 * width_s / 2.0 * g_sums, int(n_abs.sum()), n_steps

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
        noise = self._noise[_STREAM_PULSE]
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

    # ---- reads ---------------------------------------------------------------------
    def _effective_g(self, g, xi_r, t_w, stuck) -> np.ndarray:
        """Noise-free conductance a read sees now: G + relax(t), G alone if stuck."""
        p = self.params
        log_t = np.log1p((self.clock_s - t_w) / p.relax_t0_s)
        relax = (p.relax_sigma0_s + p.relax_sigma1_s * log_t) * xi_r - p.relax_mu_s * log_t
        g_eff = g + relax
        g_eff = np.where(stuck, g, g_eff)
        return np.maximum(g_eff, 0.0, out=g_eff)

    def _frozen(self) -> np.ndarray:
        """Devices whose conductance no pulse moves: stuck, worn out or not yet formed."""
        return self.stuck | self.unformed

    def _state_at(self, sel) -> tuple[np.ndarray, ...]:
        return self.g[sel], self.xi_r[sel], self.t_w[sel], self._frozen()[sel]

    def _region_state(self, row0: int, col0: int, nrows: int, ncols: int) -> tuple[np.ndarray, ...]:
        if not (0 <= row0 and 0 <= col0 and nrows > 0 and ncols > 0
                and row0 + nrows <= self.rows and col0 + ncols <= self.cols):
            raise ValueError(f"region ({row0},{col0}) {nrows}x{ncols} outside the {self.rows}x{self.cols} array")
        block = (slice(row0, row0 + nrows), slice(col0, col0 + ncols))
        return tuple(a.reshape(self.rows, self.cols)[block]
                     for a in (self.g, self.xi_r, self.t_w, self._frozen()))

    def _check_indices(self, flat_idx) -> np.ndarray:
        idx = np.asarray(flat_idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_devices):
            raise ValueError("cell index outside the array")
        return idx

    def true_conductance_s(self, flat_idx) -> np.ndarray:
        """Emulator-only truth: the noise-free conductance a read would see now (no side effects)."""
        return self._effective_g(*self._state_at(self._check_indices(flat_idx)))

    def _read_noisy(self, g_eff: np.ndarray) -> np.ndarray:
        factor = self._noise[_STREAM_READ].affine(g_eff.shape, 1.0, self.params.read_noise_rel)
        factor *= g_eff
        return factor

    def _book_read(self, g_eff: np.ndarray, n_rows: int) -> None:
        p = self.params
        self.counters.read_energy_j += p.read_voltage_v**2 * p.t_read_s * float(g_eff.sum())
        self.counters.cells_read_total += int(g_eff.size)
        self.clock_s += p.t_command_s + n_rows * p.t_read_row_s

    def read_g(self, flat_idx) -> np.ndarray:
        """Read conductances (siemens) of the given cells, in the given order.

        Clock: one command plus one row-read time per distinct row touched.
        """
        idx = self._check_indices(flat_idx)
        g_eff = self._effective_g(*self._state_at(idx))
        out = self._read_noisy(g_eff)
        rows = idx // self.cols
        if rows.size > 1 and np.all(rows[1:] >= rows[:-1]):
            n_rows = 1 + int(np.count_nonzero(rows[1:] != rows[:-1]))
        else:
            n_rows = int(np.unique(rows).size)
        self._book_read(g_eff, n_rows)
        return out

    def read_region(self, row0: int, col0: int, nrows: int, ncols: int) -> np.ndarray:
        """Read a rectangular block; returns an (nrows, ncols) array in siemens."""
        g_eff = self._effective_g(*self._region_state(row0, col0, nrows, ncols))
        out = self._read_noisy(g_eff)
        self._book_read(g_eff, nrows)
        return out

    # ---- VMM -----------------------------------------------------------------------
    def vmm(self, row0: int, col0: int, nrows: int, ncols: int, v, transpose: bool = False) -> np.ndarray:
        """Analog vector-matrix product on a block: currents in amperes.

        ``v`` (volts) has shape (B, nrows) -> output (B, ncols), ``I_j = sum_i V_i G_ij``;
        with ``transpose`` ``v`` is (B, ncols) -> (B, nrows).  A 1-D ``v`` is one vector
        and gives a 1-D result.  Read noise: one fresh draw per cell per call, shared by
        the B vectors of the call.  No DAC/ADC quantisation here (the firmware does it).
        """
        v = np.asarray(v, dtype=np.float64)
        single = v.ndim == 1
        v2 = v[None, :] if single else v
        n_in = ncols if transpose else nrows
        if v2.ndim != 2 or v2.shape[1] != n_in:
            raise ValueError(f"VMM input must have shape (B, {n_in}), got {v.shape}")
        g_eff = self._effective_g(*self._region_state(row0, col0, nrows, ncols))
        g_read = self._read_noisy(g_eff)
        currents = v2 @ (g_read.T if transpose else g_read)
        g_per_input = g_eff.sum(axis=0 if transpose else 1)  # conductance hanging on each driven line
        energy = self.params.t_read_s * float((v2**2).sum(axis=0) @ g_per_input)
        self._book_vmm(energy, v2.shape[0])
        return currents[0] if single else currents

    def _book_vmm(self, energy_j: float, n_vectors: int) -> None:
        p = self.params
        self.counters.read_energy_j += energy_j
        self.counters.vmm_calls_total += 1
        self.counters.vmm_vectors_total += n_vectors
        self.clock_s += p.t_command_s + n_vectors * p.t_vmm_s

    def account_conversions(self, n: int, dac: int = 0) -> None:
        """Book ``n`` ADC and ``dac`` DAC conversions done by the firmware."""
        self.counters.adc_conversions_total += int(n)
        self.counters.adc_energy_j += int(n) * self.params.adc_energy_j
        self.counters.dac_conversions_total += int(dac)
        self.counters.dac_energy_j += int(dac) * self.params.dac_energy_j

    # ---- truth and reproducibility ---------------------------------------------------
    def true_parameters(self) -> dict:
        """Emulator-only ground truth: the DeviceParams plus derived, realised values.

        Keys listed in ``derived_keys`` are not parameters but truths of this array's
        draws (means over non-stuck devices, nominal pulse, x = 0.5).
        """
        p = self.params
        ok = ~self.stuck_factory
        if not ok.any():
            ok = np.ones_like(ok)
        alpha_set, alpha_reset = self.alpha_set[ok], self.alpha_reset[ok]
        mean_set_step = float(alpha_set.mean()) * 0.5**p.gamma_set
        mean_reset_step = float(alpha_reset.mean()) * 0.5**p.gamma_reset
        derived = {
            "mean_set_step_mid_s": mean_set_step,
            "mean_reset_step_mid_s": mean_reset_step,
            "sigma_c2c_abs_mid_s": p.sigma_c2c * mean_set_step,
            "sigma_c2c_abs_mid_reset_s": p.sigma_c2c * mean_reset_step,
            # sigma_w_s (a parameter) is the persistent write error of one event: it stays in G, so
            # successive changes are uncorrelated and unverified writes random-walk.  The relaxation
            # spread at t = 0 (relax_sigma0_s * xi_r) is redrawn at every event and seen by the reads
            # only: it enters the change across an event twice (like a read offset) and makes
            # successive changes anti-correlated, which is what separates the two.  ΔGth's per-event
            # noise is sigma_w_s^2 + n (sigma_c2c * step)^2.
            "stuck_fraction_actual": float(self.stuck_factory.mean()),
            "worn_out_fraction": float(self.worn_out.mean()),
            "d2d_cv_actual": float(alpha_set.std() / alpha_set.mean()),
            "g_max_mean_s": float(self.g_max[ok].mean()),
            "rows": self.rows,
            "cols": self.cols,
            "seed": self.seed,
            "clock_s": self.clock_s,
        }
        out = p.model_dump()
        out.update(derived)
        out["derived_keys"] = sorted(derived)
        out["emulator_only"] = True
        return out

    def totals(self, with_digest: bool = False) -> dict:
        """Clock, running counters and the largest per-device pulse count (optionally the state digest)."""
        from dataclasses import asdict

        out = {"clock_s": self.clock_s, **asdict(self.counters),
               "max_pulses_per_device": int(self.n_pulses.max()) if self.n_pulses.size else 0}
        if with_digest:
            out["state_digest"] = self.state_digest()
        return out

    def state_digest(self) -> str:
        """sha256 of fixed and dynamic state, clock and random-stream positions."""
        h = hashlib.sha256()
        for a in (self.alpha_set, self.alpha_reset, self.g_max, self.stuck_factory,
                  self.g, self.xi_r, self.t_w, self.n_pulses, self.stuck, self.unformed):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(np.float64(self.clock_s).tobytes())
        for rng in self._rngs:
            h.update(repr(rng.bit_generator.state).encode())
        return h.hexdigest()

    def rng(self, stream: str) -> np.random.Generator:
        """The generator of one stream ('pulse', 'write' or 'read'), for alternative engines."""
        return self._rngs[{"pulse": _STREAM_PULSE, "write": _STREAM_WRITE, "read": _STREAM_READ}[stream]]

    # ---- snapshots (emulator only: exact resume of an interrupted run) ---------------
    _DYNAMIC = ("g", "xi_r", "t_w", "n_pulses", "stuck", "unformed")

    def snapshot(self) -> bytes:
        """The whole dynamic state (arrays, clock, counters, random-stream positions) as bytes.

        Fixed factors are not included: they follow from the seed, which is checked on restore.
        """
        import io
        import json
        from dataclasses import asdict

        meta = {"rows": self.rows, "cols": self.cols, "seed": self.seed, "clock_s": self.clock_s,
                "counters": asdict(self.counters), "rngs": [r.bit_generator.state for r in self._rngs],
                "params": self.params.model_dump()}
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                 **{k: getattr(self, k) for k in self._DYNAMIC})
        return buf.getvalue()

    def restore(self, blob: bytes) -> None:
        """Return to a state taken by :meth:`snapshot` of an array with the same seed, shape and parameters."""
        import io
        import json

        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as data:
                meta = json.loads(data["meta"].tobytes().decode())
                arrays = {k: data[k] for k in self._DYNAMIC}
        except (ValueError, KeyError, OSError) as exc:
            raise ValueError(f"not an array snapshot: {exc}") from None
        if (meta["rows"], meta["cols"], meta["seed"]) != (self.rows, self.cols, self.seed) \
                or meta["params"] != self.params.model_dump():
            raise ValueError(
                f"snapshot of a {meta['rows']}x{meta['cols']} array with seed {meta['seed']} (or other device "
                f"parameters) cannot be restored into this {self.rows}x{self.cols} array with seed {self.seed}"
            )
        for k, a in arrays.items():
            if a.shape != getattr(self, k).shape:
                raise ValueError(f"snapshot array {k} has the wrong shape")
            getattr(self, k)[...] = a
        self.clock_s = float(meta["clock_s"])
        self.counters = ArrayCounters(**meta["counters"])
        for rng, state in zip(self._rngs, meta["rngs"]):
            rng.bit_generator.state = state
        self.refresh_derived()

    # ---- forming and DC sweeps (characterization) ------------------------------------
    def form(self, flat_idx, voltage_v: float, width_s: float, compliance_a: float) -> np.ndarray:
        """A forming pulse on each device; returns the mask of devices formed by it.

        An unformed device whose forming voltage is reached forms: its filament grows
        until the current meets the compliance, leaving ``G = compliance / V`` (inside
        its window).  Formed devices see a compliance-limited strong SET.  Energy is
        ``V * I * width`` per device with the current at most the compliance.
        """
        p = self.params
        idx = self._check_indices(flat_idx)
        g_cc = np.clip(compliance_a / voltage_v, p.g_min_s, self.g_max[idx])
        newly = self.unformed[idx] & (voltage_v >= self.v_form[idx])
        formed_before = ~self.unformed[idx] & ~self.stuck[idx]
        g_before = self.g[idx].copy()
        g_after = g_before.copy()
        g_after[newly] = g_cc[newly]
        strong = formed_before & (voltage_v > p.v_set_threshold_v)
        g_after[strong] = np.maximum(g_before[strong], g_cc[strong])
        self.g[idx] = g_after
        self.unformed[idx[newly]] = False
        touched = idx[newly | strong]
        self._redraw_write_event(touched)
        self.n_pulses[idx] += 1
        current = np.minimum(np.maximum(g_before, g_after) * voltage_v, compliance_a)
        self._book_write_energy(float(voltage_v * width_s * current.sum()),
                                write_periphery_energy_j(p, idx.size, [(voltage_v, idx.size)]))
        self.counters.pulses_total += int(idx.size)
        self.counters.set_pulses_total += int(idx.size)
        self.counters.write_events_total += int(touched.size)
        self.clock_s += p.t_command_s + width_s
        self.refresh_derived()
        return newly

    def iv_sweep(self, flat_idx, voltages_v, step_s: float, compliance_a: float) -> np.ndarray:
        """DC staircase on each device: returns currents (n_devices, n_steps), amps.

        Each step holds its voltage for ``step_s``.  A step beyond a switching threshold
        counts as ``n = pulse_scale(V, step_s)`` nominal pulses, applied in the
        continuous limit of the soft-bounds law (``1-x -> (1-x)*exp(-n*alpha/window)``
        for SET, ``x -> x*exp(-n*alpha/window)`` for RESET) -- a DC step is many small
        pulses, not one huge one.  The compliance caps a SET at ``compliance / V``; an
        unformed device forms once its forming voltage is reached.  The current is the
        read conductance times V, clipped at the compliance.  Loops over voltage steps
        only, vectorised over devices.
        """
        p = self.params
        idx = self._check_indices(flat_idx)
        volts = np.asarray(voltages_v, dtype=np.float64).reshape(-1)
        out = np.empty((idx.size, volts.size))
        for k, v in enumerate(volts):
            if v > 0 and self.unformed[idx].any():
                self.form(idx[self.unformed[idx]], float(v), step_s, compliance_a)
            n_equiv = pulse_scale(p, float(v), step_s) if v != 0 else 0.0
            movable = idx[~self._frozen()[idx]]
            if n_equiv > 0 and movable.size:
                lo, hi = p.g_min_s, self.g_max[movable]
                window = hi - lo
                x = np.clip((self.g[movable] - lo) / window, 0.0, 1.0)
                if v > 0:
                    x = 1.0 - (1.0 - x) * np.exp(-n_equiv * self.alpha_set[movable] / window)
                    g = np.minimum(lo + x * window, max(compliance_a / v, lo))
                else:
                    x = x * np.exp(-n_equiv * self.alpha_reset[movable] / window)
                    g = lo + x * window
                self.g[movable] = g
                self._redraw_write_event(movable)
                self.n_pulses[movable] += 1
                self.counters.write_events_total += int(movable.size)
            g_eff = self._effective_g(*self._state_at(idx))
            out[:, k] = np.clip(self._read_noisy(g_eff) * v, -compliance_a, compliance_a)
            energy = float(np.abs(out[:, k]).sum() * abs(v) * step_s)
            if n_equiv > 0:
                self._book_write_energy(energy)
            else:
                self.counters.read_energy_j += energy
            self.clock_s += p.t_command_s + step_s
        return out
