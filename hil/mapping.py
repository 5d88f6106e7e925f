"""Placing weight matrices on the array and converting weights to conductances.

Each weight matrix W (n_in x n_out) occupies a tile of n_in rows and 2*n_out
columns: column ``j`` holds G+ of output j, column ``n_out + j`` holds G-, and
``W = (G+ - G-) / g_per_weight_s``.  Both devices of a pair sit around the middle of
the usable band ``[g_lo, g_hi]`` (``G± = g_mid ± W*g_per_weight_s/2``), where the
soft-bounds steps of SET and RESET are both near their mid-window size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibration.pulse_response import soft_bounds_step
from drivers.board import Region


class DoesNotFitError(ValueError):
    """The network needs more of the array than the board has."""


@dataclass(frozen=True)
class Tile:
    row0: int
    col0: int
    n_in: int
    n_out: int

    @property
    def region(self) -> Region:
        return Region(self.row0, self.col0, self.n_in, 2 * self.n_out)

    def flat_index(self, rows: np.ndarray, cols_in_tile: np.ndarray, n_cols: int) -> np.ndarray:
        return (self.row0 + rows).astype(np.int64) * n_cols + self.col0 + cols_in_tile


def place_tiles(shapes: list[tuple[int, int]], rows: int, cols: int) -> list[Tile]:
    """Shelf packing of (n_in, n_out) weight matrices, each needing n_in x 2*n_out devices.

    Raises :class:`DoesNotFitError` saying how much array the network needs.
    """
    tiles, row0, col0, shelf_h = [], 0, 0, 0
    for n_in, n_out in shapes:
        w = 2 * n_out
        if n_in > rows or w > cols:
            raise DoesNotFitError(
                f"a {n_in}x{n_out} weight matrix needs {n_in} rows x {w} columns as differential pairs; "
                f"the array has {rows}x{cols}. Use a smaller layer or a larger array"
            )
        if col0 + w > cols:  # next shelf
            row0, col0, shelf_h = row0 + shelf_h, 0, 0
        if row0 + n_in > rows:
            need_rows = row0 + n_in
            total = sum(2 * a * b for a, b in shapes)
            raise DoesNotFitError(
                f"the network's {len(shapes)} weight matrices need {total} devices as differential pairs "
                f"(at least {need_rows} rows when packed into {cols} columns); the array has {rows}x{cols}. "
                "Use smaller layers or a larger array"
            )
        tiles.append(Tile(row0, col0, n_in, n_out))
        col0 += w
        shelf_h = max(shelf_h, n_in)
    return tiles


@dataclass(frozen=True)
class ConductanceMap:
    """Weight <-> conductance scale and the calibrated per-pulse step model."""

    g_min_s: float
    g_max_s: float
    g_lo_s: float
    g_hi_s: float
    g_per_weight_s: float
    alpha_set_s: float
    gamma_set: float
    alpha_reset_s: float
    gamma_reset: float

    @property
    def g_mid_s(self) -> float:
        return 0.5 * (self.g_lo_s + self.g_hi_s)

    @classmethod
    def from_calibration(cls, cal, w_max: float = 1.0, band: float = 0.1) -> "ConductanceMap":
        """Scale so that |W| = w_max spans the band between 10 % and 90 % of the measured window."""
        g_min, g_max = cal.window_s["g_min_s"], cal.window_s["g_max_s"]
        span = g_max - g_min
        lo, hi = g_min + band * span, g_max - band * span
        s, r = cal.pulse_response["set"], cal.pulse_response["reset"]
        return cls(g_min, g_max, lo, hi, (hi - lo) / w_max, s.alpha_s, s.gamma, r.alpha_s, r.gamma)

    def x(self, g: np.ndarray) -> np.ndarray:
        return np.clip((g - self.g_min_s) / (self.g_max_s - self.g_min_s), 0.0, 1.0)

    def step_set_s(self, g: np.ndarray) -> np.ndarray:
        """Expected conductance gain of one SET pulse at conductance g."""
        return np.maximum(soft_bounds_step(self.alpha_set_s, self.gamma_set, self.x(g), "set"), 0.02 * self.alpha_set_s)

    def step_reset_s(self, g: np.ndarray) -> np.ndarray:
        """Expected conductance loss of one RESET pulse at conductance g."""
        return np.maximum(soft_bounds_step(self.alpha_reset_s, self.gamma_reset, self.x(g), "reset"),
                          0.02 * self.alpha_reset_s)

    def targets(self, w: np.ndarray) -> np.ndarray:
        """(n_in, 2*n_out) conductance targets of a weight matrix, clipped into the band."""
        half = np.clip(w * self.g_per_weight_s / 2, -(self.g_hi_s - self.g_lo_s) / 2, (self.g_hi_s - self.g_lo_s) / 2)
        return np.concatenate([self.g_mid_s + half, self.g_mid_s - half], axis=1)

    def weights(self, g: np.ndarray) -> np.ndarray:
        n = g.shape[1] // 2
        return (g[:, :n] - g[:, n:]) / self.g_per_weight_s


def fit_hint(task: str, rows: int, cols: int) -> str:
    """What to train on a ``rows`` x ``cols`` array instead: the widest one-hidden-layer network of the small
    classification task that fits, or how large an array its smallest network needs."""
    n_in, n_out = 16, 10  # digits-small: 4x4 pooled digits, ten classes
    for hidden in (32, 16, 8, 4, 2):
        try:
            place_tiles([(n_in, hidden), (hidden, n_out)], rows, cols)
        except DoesNotFitError:
            continue
        if task == "digits-small":
            return f"--hidden {hidden} fits this {rows}x{cols} array"
        return f"--task digits-small --hidden {hidden} fits this {rows}x{cols} array"
    return (f"the smallest network here, --task digits-small --hidden 2, needs {n_in} rows x {2 * 2 + 2 * n_out} "
            f"columns (e.g. hil emulator serve-bench --rows {n_in} --cols {2 * 2 + 2 * n_out})")
