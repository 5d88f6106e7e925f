"""Pulses and host-side write-verify on the VISA bench, mixed into :class:`drivers.visa_bench.VisaBenchBoard`.

Per polarity the generator is set once to the profile and its output turned on; each device is
routed in turn and fired a burst of its pulses (then its partial last pulse, while still routed);
devices are ordered so the generator's width changes rarely.  See :mod:`drivers.visa_bench`.
"""

from __future__ import annotations

import math

import numpy as np

from drivers.board import ProgramReport, PulseBatch, PulseReport
from drivers.errors import BoardError, LimitViolation
from drivers.instruments.keysight33500b import MIN_WIDTH_SEC
from drivers.limits import PulseProfile, batch_slices, max_pulses_per_event
from drivers.visa_bench_setup import quiet
from protocols.write_verify import write_verify_loop


class BenchPulsesMixin:
    """Pulse batches and write-verify of a :class:`VisaBenchBoard` (its instruments, wiring and totals)."""

    def _do_set_profiles(self, set_profile: PulseProfile, reset_profile: PulseProfile) -> None:
        for p in (set_profile, reset_profile):
            self._period(p.width_sec)  # a profile the generator cannot make is refused now

    def _period(self, width_sec: float) -> float:
        pg = self.config.pulse_generator
        period = pg.period_sec if pg.period_sec is not None else max(pg.min_period_sec, 2.0 * width_sec)
        if width_sec > period - MIN_WIDTH_SEC:
            raise LimitViolation(f"a {width_sec:g} s pulse does not fit the bench's {period:g} s pulse period "
                                 "([pulse_generator] period_sec)")
        return period

    def _g_estimate(self, flat: int) -> float:
        g = self._g_last[flat]
        if math.isfinite(g):
            return max(float(g), 0.0)
        known = self._g_last[np.isfinite(self._g_last)]
        return float(np.mean(known)) if known.size else 0.0

    @staticmethod
    def _bursts(sel: np.ndarray, counts: np.ndarray, last_width_sec: np.ndarray | None,
                width_sec: float) -> list[tuple[int, list[tuple[float, int]]]]:
        """(position, [(width, pulses), ...]) per device of one phase, ordered to change the width rarely.

        Full-width devices first, then devices with whole pulses and a partial one (a full burst, then
        the partial pulse while still routed: one write event), then partial-only devices, each group
        sorted by the partial width so that devices sharing a width share one generator setting.
        """
        mags = np.abs(counts[sel])
        if last_width_sec is None:
            return [(int(k), [(width_sec, int(n))]) for k, n in zip(sel.tolist(), mags.tolist())]
        w = last_width_sec[sel]
        partial = w < width_sec
        group = np.where(~partial, 0, np.where(mags > 1, 1, 2))
        order = np.lexsort((np.where(partial, w, 0.0), group))
        out = []
        for k in order.tolist():
            n, pos = int(mags[k]), int(sel[k])
            if not partial[k]:
                out.append((pos, [(width_sec, n)]))
            else:
                out.append((pos, ([(width_sec, n - 1)] if n > 1 else []) + [(float(w[k]), 1)]))
        return out

    def _do_application_order(self, counts_sorted: np.ndarray, last_width_sec: np.ndarray | None) -> np.ndarray:
        """SET devices first, then RESET devices, each phase in :meth:`_bursts` order (as :meth:`_do_pulse`)."""
        order: list[int] = []
        for polarity, profile in ((+1, self._profiles[0]), (-1, self._profiles[1])):
            sel = np.flatnonzero(counts_sorted > 0) if polarity > 0 else np.flatnonzero(counts_sorted < 0)
            if sel.size:
                order += [k for k, _ in self._bursts(sel, counts_sorted, last_width_sec, profile.width_sec)]
        return np.asarray(order, dtype=np.int64)

    def _do_pulse(self, flat_sorted: np.ndarray, counts: np.ndarray, tag: int = 0,
                  last_width_sec: np.ndarray | None = None) -> PulseReport:
        gen, matrix = self.generator, self.matrix
        w = self.config.wiring
        for width in ([] if last_width_sec is None else np.unique(last_width_sec).tolist()):
            self._period(width)  # every width must fit the bench's period before anything is sent
        t_start = self._do_clock()
        done = {"devices": 0, "set": 0, "reset": 0, "energy": 0.0}

        def report(t_end: float) -> PulseReport:
            return PulseReport(devices=done["devices"], set_pulses=done["set"], reset_pulses=done["reset"],
                               energy_j=done["energy"], duration_sec=max(0.0, t_end - t_start), clock_sec=t_end)

        phases = [(+1, self._profiles[0]), (-1, self._profiles[1])]
        in_flight: tuple[int, int, int] | None = None
        with self._operation("pulse batch"):
            try:
                for polarity, profile in phases:
                    sel = np.flatnonzero(counts > 0) if polarity > 0 else np.flatnonzero(counts < 0)
                    if sel.size == 0:
                        continue
                    level = abs(profile.amplitude_v)
                    bursts = self._bursts(sel, counts, last_width_sec, profile.width_sec)
                    gen.set_pulse(level, bursts[0][1][0][0], self._period(bursts[0][1][0][0]))
                    gen.output_enabled = True
                    try:
                        for k, train in bursts:
                            f = int(flat_sorted[k])
                            n = abs(int(counts[k]))
                            r, c = divmod(f, self._cols)
                            in_flight = (r, c, polarity * n)
                            matrix.route(self._channels(r, c, w.pulse_hi, w.pulse_lo, reverse=polarity < 0))
                            for width, pulses in train:
                                gen.set_pulse(level, width, self._period(width))  # writes only what changed
                                gen.fire_burst(pulses)
                                done["energy"] += level**2 * self._g_estimate(f) * width * pulses
                            in_flight = None
                            done["devices"] += 1
                            done["set" if polarity > 0 else "reset"] += n
                            self._pulses_per_device[f] += n
                    finally:
                        quiet(lambda: gen.output_off(confirm=True))
            except BoardError as exc:
                exc.partial = report(quiet(self._do_clock) or t_start)  # type: ignore[attr-defined]
                exc.in_flight = in_flight  # type: ignore[attr-defined]
                raise
            finally:
                self._book_pulses(done)
                quiet(lambda: matrix.open_all(confirm=True))
        if tag:  # host memory: lost with the host process (capabilities.durable_pulse_tags is false)
            self._last_tag = tag
        return report(self._do_clock())

    def _book_pulses(self, done: dict) -> None:
        t = self._totals
        t["pulses"] += done["set"] + done["reset"]
        t["set"] += done["set"]
        t["reset"] += done["reset"]
        t["write_events"] += done["devices"]
        t["write_energy"] += done["energy"]

    def _do_program(self, flat: np.ndarray, targets_s: np.ndarray, tolerance_s: float, max_iter: int) -> ProgramReport:
        wv = self.config.write_verify
        lim = self.limits
        rows, cols = np.divmod(flat, self._cols)
        energy0 = self._totals["write_energy"] + self._totals["read_energy"]
        pulses = 0

        def pulse(pos: np.ndarray, counts: np.ndarray) -> None:
            # one round: every device in one batch if the batch limit allows, else in consecutive batches
            nonlocal pulses
            for part in batch_slices(np.abs(counts), lim.max_pulses_per_batch):
                pulses += self.pulse(PulseBatch(rows[pos[part]], cols[pos[part]], counts[part])).pulses

        out = write_verify_loop(
            read=lambda pos: self.read_cells(rows[pos], cols[pos]), pulse=pulse, n_devices=flat.size,
            targets_s=targets_s, tolerance_s=tolerance_s, max_iter=max_iter, nominal_step_s=wv.nominal_step_s,
            max_pulses_per_round=int(min(wv.max_pulses_per_round, max_pulses_per_event(lim))),
        )
        energy = self._totals["write_energy"] + self._totals["read_energy"] - energy0
        return ProgramReport(out.achieved_s, out.converged, out.iterations, int(pulses), float(energy))
