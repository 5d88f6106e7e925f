"""ΔGth, the EaPU noise threshold, from the measured write noise and pulse response.

EAPU.md: ``ΔGth`` is the smallest change whose mean equals its noise (SNR = 1),
times a user factor ``snr1_multiple`` (default 1; ``CalibrationParams.delta_g_th_snr1_multiple``,
EAPU.md's ``k``); the drift spread at a stated write-to-use delay may be added in
quadrature.  With the mean step ``mu`` per pulse at mid-window (per polarity) and one
write event of ``n`` pulses changing the stored state with spread

    sigma(n)^2 = sigma_w^2 + n sigma_c2c^2 (+ sigma_relax(delay)^2),   sigma_c2c = sigma_rel * mu

(``sigma_w``: the persistent write error of one event, which accumulates over
unverified writes; ``sigma_relax = sigma_r0 + sigma1 ln(1 + delay/t0)``: the
read-visible relaxation spread at the write-to-use delay, added only when a delay
is given -- it is redrawn at each event and does not accumulate), SNR = 1 is the
root ``n*`` of ``mu n = sigma(n)``:

    n* = (sigma_c2c^2 + sqrt(sigma_c2c^4 + 4 mu^2 (sigma_w^2 + sigma_relax^2))) / (2 mu^2)

and ``ΔGth = snr1_multiple * mu n*``.  The headline value is the larger of the two polarities
(a quantum must be reliable whichever way it goes); one quantum is
:func:`quantum_pulses` ``= max(1, round(ΔGth / mu))`` pulses of a polarity, so its
mean change is within half a step of ``ΔGth`` -- the same rounding the EaPU rule
applies per device at its own step (``hil.update_rules.EaPU``); ``quantum_pulses``
of the result is the larger of the two polarities' counts.

Uncertainty: the write-noise bootstrap replicates of ``sigma_w``, ``sigma_r0`` and
``sigma_rel`` combined with normal draws of ``mu`` and ``sigma1`` at their standard
errors (error propagation by simulation).
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from protocols.unit_names import AcceptsOldSecondNames


class ThresholdResult(AcceptsOldSecondNames):
    delta_g_th_s: float
    delta_g_th_sigma_s: float
    snr1_multiple: float
    drift_delay_sec: float | None
    drift_sigma_s: float = Field(description="relaxation spread at the delay, added in quadrature (0 without a delay)")
    by_polarity: dict[str, dict[str, float]] = Field(description="snr1_pulses, delta_g_th_s, step, c2c per polarity")
    quantum_pulses: int = Field(description="pulses of one quantum at mid-window, the larger of the two polarities")
    quantum_pulses_by_polarity: dict[str, int]


def quantum_pulses(delta_g_th_s: float, step_s: np.ndarray | float,
                   max_pulses: int | None = None) -> np.ndarray:
    """Pulses of one EaPU quantum: ``round(ΔGth / step)``, at least 1 (and at most ``max_pulses``).

    The one definition of the quantum's rounding (to nearest: the quantum is within half a
    step of ΔGth), used by the calibration report and, per device, by the EaPU rule."""
    n = np.maximum(np.rint(delta_g_th_s / np.asarray(step_s, dtype=np.float64)), 1)
    if max_pulses is not None:
        n = np.minimum(n, max_pulses)
    return n.astype(np.int64)


def snr1_pulses(mu: np.ndarray | float, s: np.ndarray | float, sigma_c2c: np.ndarray | float,
                extra_var: np.ndarray | float = 0.0) -> np.ndarray:
    """Root n* of ``mu n = sqrt(s^2 + extra + n sigma_c2c^2)``."""
    mu, s, c = (np.asarray(v, float) for v in (mu, s, sigma_c2c))
    c2 = c**2
    return (c2 + np.sqrt(c2**2 + 4 * mu**2 * (s**2 + extra_var))) / (2 * mu**2)


def delta_g_threshold(*, step_mid_s: dict[str, float], step_mid_sigma_s: dict[str, float], write_noise_s: float,
                      c2c_rel: float, boot_s: np.ndarray | None = None, boot_c2c_rel: np.ndarray | None = None,
                      relax_sigma0_s: float = 0.0, boot_relax_sigma0_s: np.ndarray | None = None,
                      snr1_multiple: float = 1.0, drift_delay_sec: float | None = None, drift_sigma1_s: float = 0.0,
                      drift_sigma1_sigma_s: float = 0.0, drift_t0_sec: float = 1.0,
                      rng: np.random.Generator | None = None) -> ThresholdResult:
    """ΔGth and the quantum in pulses; see the module docstring."""
    k = snr1_multiple
    if not k > 0:
        raise ValueError(f"the threshold's multiple of the SNR=1 change must be positive, got {k}")
    if drift_delay_sec is not None and drift_delay_sec < 0:
        raise ValueError(f"the drift delay must be >= 0 s, got {drift_delay_sec}")
    delayed = drift_delay_sec is not None
    lt = math.log1p(drift_delay_sec / drift_t0_sec) if drift_delay_sec else 0.0
    drift_sigma = (relax_sigma0_s + drift_sigma1_s * lt) if delayed else 0.0
    rng = rng or np.random.default_rng(0)
    if boot_s is None or boot_c2c_rel is None or len(boot_s) < 2:
        boot_s, boot_c2c_rel, boot_relax_sigma0_s = (np.array([write_noise_s]), np.array([c2c_rel]),
                                                     np.array([relax_sigma0_s]))
    if boot_relax_sigma0_s is None or len(boot_relax_sigma0_s) != len(boot_s):
        boot_relax_sigma0_s = np.full(len(boot_s), relax_sigma0_s)
    nb = len(boot_s)
    by_pol, dist = {}, {}
    for pol in ("set", "reset"):
        mu = step_mid_s[pol]
        if not mu > 0:
            raise ValueError(f"the mean {pol} step is not positive ({mu}); the devices do not respond to the pulses")
        n_star = float(snr1_pulses(mu, write_noise_s, c2c_rel * mu, drift_sigma**2))
        by_pol[pol] = {"snr1_pulses": n_star, "delta_g_th_s": k * mu * n_star, "step_mid_s": mu,
                       "sigma_c2c_s": c2c_rel * mu}
        mu_b = np.maximum(mu + step_mid_sigma_s.get(pol, 0.0) * rng.standard_normal(nb), 1e-3 * mu)
        ds_b = (boot_relax_sigma0_s + (drift_sigma1_s + drift_sigma1_sigma_s * rng.standard_normal(nb)) * lt
                if delayed else np.zeros(nb))
        dist[pol] = k * mu_b * snr1_pulses(mu_b, boot_s, boot_c2c_rel * mu_b, ds_b**2)
    dg = max(v["delta_g_th_s"] for v in by_pol.values())
    worst = np.maximum(dist["set"], dist["reset"])
    quanta = {p: int(quantum_pulses(dg, v["step_mid_s"])) for p, v in by_pol.items()}
    return ThresholdResult(delta_g_th_s=dg, delta_g_th_sigma_s=float(worst.std(ddof=1)) if worst.size > 1 else 0.0,
                           snr1_multiple=k, drift_delay_sec=drift_delay_sec, drift_sigma_s=drift_sigma, by_polarity=by_pol,
                           quantum_pulses=max(quanta.values()), quantum_pulses_by_polarity=quanta)
