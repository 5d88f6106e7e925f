"""Fast normal deviates for the emulated array's dynamic noise (cycle-to-cycle, write, read).

By default a 16-bit inverse-CDF table: 65536 equiprobable normal quantiles rescaled to exact unit
variance (|xi| <= 4.3), about three times faster per deviate than numpy's ziggurat; ``exact=True``
uses numpy's float32 ziggurat instead.
"""

from __future__ import annotations

import functools
import statistics

import numpy as np

# the emulated array's random streams, in np.random.SeedSequence(seed).spawn(4) order
STREAM_FIXED, STREAM_PULSE, STREAM_WRITE, STREAM_READ = range(4)


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
