"""Truth and reproducibility of the emulated array: ground-truth parameters, totals, state digest and
exact snapshots (emulator only), mixed into :class:`firmware_stub.array_model.MemristorArray`.
"""

from __future__ import annotations

import hashlib

import numpy as np

from firmware_stub.pulse_energy import ArrayCounters
from protocols.unit_names import from_wire, to_wire


class ArrayTruthMixin:
    """What the emulator alone can tell and restore about a :class:`MemristorArray` (whose state it reads)."""

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
            "clock_sec": self.clock_sec,
        }
        out = p.model_dump()
        out.update(derived)
        out["derived_keys"] = sorted(derived)
        out["emulator_only"] = True
        return out

    def totals(self, with_digest: bool = False) -> dict:
        """Clock, running counters and the largest per-device pulse count (optionally the state digest)."""
        from dataclasses import asdict

        out = {"clock_sec": self.clock_sec, **asdict(self.counters),
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
        h.update(np.float64(self.clock_sec).tobytes())
        for rng in self._rngs:
            h.update(repr(rng.bit_generator.state).encode())
        return h.hexdigest()

    # ---- snapshots (emulator only: exact resume of an interrupted run) ---------------
    _DYNAMIC = ("g", "xi_r", "t_w", "n_pulses", "stuck", "unformed")

    def snapshot(self) -> bytes:
        """The whole dynamic state (arrays, clock, counters, random-stream positions) as bytes.

        Fixed factors are not included: they follow from the seed, which is checked on restore.
        """
        import io
        import json
        from dataclasses import asdict

        meta = {"rows": self.rows, "cols": self.cols, "seed": self.seed, "clock_sec": self.clock_sec,
                "counters": asdict(self.counters), "rngs": [r.bit_generator.state for r in self._rngs],
                "params": self.params.model_dump()}
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(json.dumps(to_wire(meta)).encode(), dtype=np.uint8),  # bytes of protocol v3
                 **{k: getattr(self, k) for k in self._DYNAMIC})
        return buf.getvalue()

    def restore(self, blob: bytes) -> None:
        """Return to a state taken by :meth:`snapshot` of an array with the same seed, shape and parameters."""
        import io
        import json

        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as data:
                meta = from_wire(json.loads(data["meta"].tobytes().decode()))
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
        self.clock_sec = float(meta["clock_sec"])
        self.counters = ArrayCounters(**meta["counters"])
        for rng, state in zip(self._rngs, meta["rngs"]):
            rng.bit_generator.state = state
        self.refresh_derived()
