"""Throughput of the pulse-batch codec on a 1024x1024 array (devices per second, encode and decode).

Run: ``python benchmarks/bench_codec.py``.  Prints figures; asserts nothing (timings
on shared machines are not pass/fail material).  The byte budgets are asserted in
tests/test_encoding.py because they do not depend on the machine.
"""

from __future__ import annotations

import time

import numpy as np

from protocols.encoding import decode_pulse_batch, encode_pulse_batch

N_DEVICES = 1024 * 1024


def _best(fn, repeat: int = 15) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    rng = np.random.default_rng(7)
    for fraction in (0.001, 0.1, 1.0):
        k = int(round(N_DEVICES * fraction))
        idx = np.sort(rng.choice(N_DEVICES, size=k, replace=False)).astype(np.int64)
        counts = (rng.integers(1, 4, size=k) * rng.choice(np.array([-1, 1]), size=k)).astype(np.int64)
        payload = encode_pulse_batch(idx, counts)
        t_enc = _best(lambda: encode_pulse_batch(idx, counts))
        t_dec = _best(lambda: decode_pulse_batch(payload))
        print(f"{fraction:>6.1%} written ({k:>8} devices): {len(payload) / k:.3f} B/device, "
              f"encode {k / t_enc:.3g} dev/s, decode {k / t_dec:.3g} dev/s")


if __name__ == "__main__":
    main()
