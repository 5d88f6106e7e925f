"""Linear layers of the MLP: on the array (differential pairs) or digital (the float reference).

An :class:`AnalogLinear` keeps its weights in the devices: the forward pass is a
VMM on its tile, the backward pass to its inputs a transposed VMM (or, where the
board has none, a product with a weight estimate read on a schedule), and an
update becomes signed pulse counts for the devices the update rule keeps.

On a board without VMM (the VISA bench) the forward pass multiplies by weights
*measured* from the devices: the tile is read at the scheduled checks and the
devices written by each step are read right after their pulses.

The layer holds a host-side *estimate* of each device's conductance, refreshed by
scheduled reads and advanced by the expected effect of the pulses sent.  It is
used only to pick the device of a pair to move, its step per pulse (soft bounds)
and the ADC range -- never as the weights themselves: there is no digital shadow
copy, the device holds the weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers.board import Board
from hil.mapping import ConductanceMap, Tile
from hil.update_rules import UpdateRule, WidthGrid


def width_grid(board: Board, use_set: np.ndarray | bool) -> WidthGrid:
    """The partial-pulse widths ``board`` makes, as fractions of the profile width of each device's
    polarity (``use_set``: True where the device is SET): its timing resolution, from its effective
    minimum pulse width up."""
    w = np.where(use_set, board.profiles[0].width_sec, board.profiles[1].width_sec)
    return WidthGrid(board.info.timing_resolution_sec / w, board.limits.min_pulse_width_sec / w)


@dataclass
class UpdateStats:
    """What one layer's update wrote: every written weight has exactly one of its pair's devices written."""

    devices_written: int = 0
    pulses: int = 0
    saturated_pairs: int = 0


@dataclass(frozen=True)
class LayerUpdate:
    """One layer's share of a step's pulse batch: flat device indices, signed pulse counts and
    last-pulse widths (seconds), what it wrote, and how many devices the layer holds (0: digital)."""

    flat: np.ndarray
    counts: np.ndarray
    last_width_sec: np.ndarray
    stats: UpdateStats
    devices_held: int

    @classmethod
    def digital(cls) -> "LayerUpdate":
        """A layer in host memory: nothing to pulse."""
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), UpdateStats(), 0)


class DigitalLinear:
    """Weights in host memory: the ``float`` reference."""

    analog = False

    def __init__(self, w: np.ndarray):
        self.w = np.array(w, dtype=np.float64)

    @property
    def shape(self) -> tuple[int, int]:
        return self.w.shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w

    def backward_input(self, delta: np.ndarray) -> np.ndarray:
        return delta @ self.w.T

    def apply_delta(self, dw: np.ndarray) -> None:
        self.w += dw

    def update(self, dw: np.ndarray, rng: np.random.Generator) -> LayerUpdate:
        """The optimizer's change applied in host memory (``rng`` unused: the same call as an analog layer's)."""
        self.apply_delta(dw)
        return LayerUpdate.digital()

    def weights(self) -> np.ndarray:
        return self.w

    def state_dict(self) -> dict:
        return {"w": self.w.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.w = np.array(state["w"], dtype=np.float64)


class AnalogLinear:
    """A weight matrix stored as differential conductance pairs on a board tile; ``rule`` turns its
    weight changes into pulses (:meth:`update`; one rule per layer: a stateful rule such as ``mixed``
    keeps an accumulator shaped like its layer)."""

    analog = True

    def __init__(self, board: Board, tile: Tile, cmap: ConductanceMap, rule: UpdateRule | None = None):
        self.board = board
        self.rule = rule
        self.tile = tile
        self.cmap = cmap
        self.region = tile.region
        self.n_in, self.n_out = tile.n_in, tile.n_out
        self.g_est = np.full((self.n_in, 2 * self.n_out), cmap.g_mid_s)
        info = board.info
        self.v_fs = min(info.dac_full_scale_v, board.limits.max_read_v)
        self.use_transpose = info.capabilities.vmm and info.capabilities.vmm_transpose
        self.w_read: np.ndarray | None = None  # scheduled weight estimate for boards without transposed VMM
        self.pulse_counts = np.zeros((self.n_in, 2 * self.n_out), dtype=np.int64)
        # pairs with a device that write-verify could not move (stuck, worn out): frozen, never written
        self.dead = np.zeros((self.n_in, self.n_out), dtype=bool)

    def _mark_dead(self, rows: np.ndarray, cols: np.ndarray, converged: np.ndarray) -> None:
        bad = ~converged
        self.dead[rows[bad], cols[bad] % self.n_out] = True

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_in, self.n_out)

    # ---- programming and scheduled checks -------------------------------------------------
    def program(self, w: np.ndarray, tolerance_s: float, max_iter: int = 60):
        """Write-verify the initial weights; returns the ProgramReport."""
        targets = self.cmap.targets(w)
        rows, cols = np.indices(targets.shape)
        rep = self.board.program(rows.ravel() + self.tile.row0, cols.ravel() + self.tile.col0, targets.ravel(),
                                 tolerance_s, max_iter)
        self.g_est = rep.achieved_s.reshape(targets.shape).copy()
        self._mark_dead(rows.ravel(), cols.ravel(), rep.converged)
        self.w_read = self.cmap.weights(self.g_est)
        return rep

    def refresh(self) -> np.ndarray:
        """Scheduled check: read the tile, reset the estimate; returns the conductances."""
        g = self.board.read(self.region)
        self.g_est = g.copy()
        self.w_read = self.cmap.weights(g)
        return g

    def rebalance(self, tolerance_s: float, max_iter: int = 60):
        """Re-centre pairs with a device outside the band, keeping their difference.

        Returns the ProgramReport, or None when no pair needed it.  Call after :meth:`refresh`.
        """
        c = self.cmap
        n = self.n_out
        gp, gm = self.g_est[:, :n], self.g_est[:, n:]
        out = ((gp > c.g_hi_s) | (gp < c.g_lo_s) | (gm > c.g_hi_s) | (gm < c.g_lo_s)) & ~self.dead
        if not out.any():
            return None
        i, j = np.nonzero(out)
        half = np.clip((gp[i, j] - gm[i, j]) / 2, -(c.g_hi_s - c.g_lo_s) / 2, (c.g_hi_s - c.g_lo_s) / 2)
        rows = np.concatenate([i, i]) + self.tile.row0
        cols = np.concatenate([j, j + n]) + self.tile.col0
        targets = np.concatenate([c.g_mid_s + half, c.g_mid_s - half])
        rep = self.board.program(rows, cols, targets, tolerance_s, max_iter)
        self.g_est[rows - self.tile.row0, cols - self.tile.col0] = rep.achieved_s
        self._mark_dead(rows - self.tile.row0, cols - self.tile.col0, rep.converged)
        return rep

    def weights(self) -> np.ndarray:
        """The last scheduled weight estimate (a read), for reports and plots."""
        return self.cmap.weights(self.g_est)

    # ---- compute -----------------------------------------------------------------------------
    def _adc_range(self, v: np.ndarray, g: np.ndarray) -> float:
        lo, hi = self.board.info.adc_full_scale_a
        est = float(np.max(np.abs(v) @ g)) if v.size else lo
        return float(np.clip(1.5 * est, lo, hi))

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not self.board.info.capabilities.vmm:
            if self.w_read is None:
                self.refresh()
            return x @ self.w_read
        s = float(np.max(np.abs(x)))
        if s == 0.0:
            return np.zeros((x.shape[0], self.n_out))
        v = x * (self.v_fs / s)
        i = self.board.vmm(self.region, v, i_full_scale_a=self._adc_range(v, self.g_est))
        return (i[:, : self.n_out] - i[:, self.n_out:]) * (s / (self.v_fs * self.cmap.g_per_weight_s))

    def backward_input(self, delta: np.ndarray) -> np.ndarray:
        if not self.use_transpose:
            if self.w_read is None:
                self.refresh()
            return delta @ self.w_read.T
        s = float(np.max(np.abs(delta)))
        if s == 0.0:
            return np.zeros((delta.shape[0], self.n_in))
        v = np.concatenate([delta, -delta], axis=1) * (self.v_fs / s)
        i = self.board.vmm(self.region, v, transpose=True, i_full_scale_a=self._adc_range(v, self.g_est.T))
        return i * (s / (self.v_fs * self.cmap.g_per_weight_s))

    # ---- updates -------------------------------------------------------------------------------
    def _route(self, up: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For a wanted direction per weight (``up``: the weight must grow), which device of each
        pair moves and how: returns (use_set, on_plus, saturated).

        Growing SETs G+ or RESETs G-, whichever keeps the pair's common mode nearer the band
        centre and has headroom; shrinking is the mirror image.  ``saturated``: neither has room.
        """
        c, n = self.cmap, self.n_out
        gp, gm = self.g_est[:, :n], self.g_est[:, n:]
        low_cm = (gp + gm) < 2 * c.g_mid_s
        set_ok_p, set_ok_m = gp < c.g_hi_s, gm < c.g_hi_s
        reset_ok_p, reset_ok_m = gp > c.g_lo_s, gm > c.g_lo_s
        use_set = np.where(up, (low_cm & set_ok_p) | ~reset_ok_m, (low_cm & set_ok_m) | ~reset_ok_p)
        saturated = np.where(up, ~set_ok_p & ~reset_ok_m, ~set_ok_m & ~reset_ok_p)
        on_plus = use_set == up  # up: SET G+ or RESET G-;  down: SET G- or RESET G+
        return use_set, on_plus, saturated

    def _step(self, use_set: np.ndarray, on_plus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, n = self.cmap, self.n_out
        g_dev = np.where(on_plus, self.g_est[:, :n], self.g_est[:, n:])
        return g_dev, np.where(use_set, c.step_set_s(g_dev), c.step_reset_s(g_dev))

    def plan_update(self, dw: np.ndarray, rule: UpdateRule, rng: np.random.Generator):
        """Pulses realising the weight change ``dw`` under ``rule``.

        Returns (flat device indices, signed pulse counts, last-pulse widths in seconds,
        UpdateStats).  A count includes a device's partial pulse (``bp``), which is its
        last pulse; its width is ``|partial_frac|`` of the profile width of its polarity
        (the others: the full profile width).  The rule sees the step of the device that
        would move in the direction of ``dw`` and the board's width grid; the pulses it
        plans are routed by *their own* sign (a stateful rule such as ``mixed`` may pulse
        against this step's ``dw``).  Frozen (dead) pairs and pairs with no headroom get nothing.
        """
        c, n = self.cmap, self.n_out
        dg = dw * c.g_per_weight_s
        use_set, on_plus, saturated = self._route(dg >= 0)
        _, step = self._step(use_set, on_plus)
        blocked = self.dead | (saturated & (dg != 0))
        plan = rule.plan(np.where(blocked, 0.0, dg), step, rng, width_grid(self.board, use_set))
        pulses = np.where(self.dead, 0, plan.pulses)
        partial = np.where(self.dead, 0.0, plan.partial_frac)
        total = pulses + partial
        flip = (total != 0) & ((total > 0) != (dg >= 0))
        if flip.any():  # route those by the sign the rule chose
            f_set, f_plus, f_sat = self._route(total > 0)
            use_set, on_plus = np.where(flip, f_set, use_set), np.where(flip, f_plus, on_plus)
            pulses = np.where(flip & f_sat, 0, pulses)
            partial = np.where(flip & f_sat, 0.0, partial)
        g_dev, step = self._step(use_set, on_plus)
        mags, frac = np.abs(pulses), np.abs(partial)
        slots = mags + (frac > 0)  # pulses sent: the whole ones and the partial one
        i, j = np.nonzero(slots)
        counts = np.where(use_set[i, j], slots[i, j], -slots[i, j])
        col = np.where(on_plus[i, j], j, j + n)
        moved = (mags[i, j] + frac[i, j]) * step[i, j]
        self.g_est[i, col] = np.clip(g_dev[i, j] + np.where(counts > 0, moved, -moved), c.g_min_s, c.g_max_s)
        self.pulse_counts[i, col] += slots[i, j]
        profile_w = np.where(use_set[i, j], self.board.profiles[0].width_sec, self.board.profiles[1].width_sec)
        last_w = np.where(frac[i, j] > 0, frac[i, j] * profile_w, profile_w)
        flat = self.tile.flat_index(i, col, self.board.info.cols)
        stats = UpdateStats(int(i.size), int(slots.sum()), int(saturated[dg != 0].sum()))
        return flat, counts.astype(np.int64), last_w, stats

    def update(self, dw: np.ndarray, rng: np.random.Generator) -> LayerUpdate:
        """The pulses realising ``dw`` under the layer's own rule (:meth:`plan_update`)."""
        if self.rule is None:
            raise ValueError("this layer has no update rule: construct it with rule=...")
        flat, counts, last_w, stats = self.plan_update(dw, self.rule, rng)
        return LayerUpdate(flat, counts, last_w, stats, self.g_est.size)

    def after_pulses(self, flat: np.ndarray) -> int:
        """On a board without VMM the host computes with measured weights: re-read the devices
        just written (few, under EaPU) so the next forward pass sees them.  Returns cells read."""
        if self.board.info.capabilities.vmm or flat.size == 0:
            return 0
        cols = self.board.info.cols
        r, c = flat // cols - self.tile.row0, flat % cols - self.tile.col0
        mine = (r >= 0) & (r < self.n_in) & (c >= 0) & (c < 2 * self.n_out)
        if not mine.any():
            return 0
        g = self.board.read_cells(flat[mine] // cols, flat[mine] % cols)
        self.g_est[r[mine], c[mine]] = g
        self.w_read = self.cmap.weights(self.g_est)
        return int(mine.sum())

    def take_measured(self, flat: np.ndarray, g: np.ndarray) -> None:
        """Conductances of some devices measured elsewhere (a resume's read-back): the estimate takes them,
        and on a board without VMM the weights the next forward pass uses."""
        cols = self.board.info.cols
        r, c = flat // cols - self.tile.row0, flat % cols - self.tile.col0
        mine = (r >= 0) & (r < self.n_in) & (c >= 0) & (c < 2 * self.n_out)
        if not mine.any():
            return
        self.g_est[r[mine], c[mine]] = g[mine]
        if not self.board.info.capabilities.vmm:
            self.w_read = self.cmap.weights(self.g_est)

    def state_dict(self) -> dict:
        return {"g_est": self.g_est.copy(), "pulse_counts": self.pulse_counts.copy(), "dead": self.dead.copy(),
                "w_read": None if self.w_read is None else self.w_read.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.g_est = np.array(state["g_est"], dtype=np.float64)
        self.pulse_counts = np.array(state["pulse_counts"], dtype=np.int64)
        self.dead = np.array(state["dead"], dtype=bool)
        self.w_read = None if state.get("w_read") is None else np.array(state["w_read"])
