"""Was a pulse batch applied?  Deciding it from a read-back, for boards whose pulse tags die with the host.

On a board without durable pulse tags (the VISA bench, ``Capabilities.durable_pulse_tags``
false) the training loop reads the devices a step will pulse before it writes the
step's write-ahead checkpoint, and keeps that read in the checkpoint.  A run resumed
from that checkpoint reads them again; :func:`decide` tells from the change whether
the batch was applied.

The board applies a batch device by device in a known order
(:meth:`drivers.board.Board.application_order`), so a host that died at any point
leaves a *prefix* of that order applied: none, some, or all of the devices.  For
every device the change ``d = g_after - g_before`` is compared with two calibrated
Gaussian models:

* not applied: ``d ~ N(0, v_read)``, the two reads' noise (``read_noise_rel * g``
  per read, plus the read quantisation);
* applied: ``d ~ N(mu, v_read + v_c2c + 2 sigma_w^2 + (d2d_cv mu)^2)``, ``mu`` the
  expected change of its pulses (the calibrated soft-bounds step, pulse by pulse,
  partial last pulse scaled by its width), with the cycle-to-cycle spread of every
  pulse, the write error of the write event and the device-to-device spread
  of the step; mixed with the stuck fraction of ``N(0, v_read)`` (a stuck device does
  not move when pulsed).

The log-likelihood of "the first ``k`` devices were applied" is then a cumulative
sum of the devices' log-likelihood ratios; with a uniform prior on the values of
``k`` still possible the posterior picks ``k``.  Which are possible the host's own
journal says (``pulse_journal.json``, written atomically around the send): before
"sending" was recorded nothing was sent (``k = 0``), after "sent" everything was
(``k = n``); in between -- the host died in the middle of the batch -- any ``k``.
The read-back alone cannot tell "all applied" from "all but the last device" when
that device got one small pulse (its change is within the read noise), which is
why the journal bounds the window; inside it the read-back decides.  The decision's confidence is the posterior
log-odds of that ``k`` against every other and the implied error probability; below
:data:`MAX_ERROR_PROBABILITY` nothing is guessed (:class:`UndecidedBatch`).  Also
reported: the log-likelihood ratio of "all applied" against "none applied", and
the projection z-score of the changes on the expected change (z near 0: nothing
moved; z near its expected value ``z_expected``: everything did).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hil.mapping import ConductanceMap

MAX_ERROR_PROBABILITY = 1e-4
"""A resume decision is acted on only when the probability that it is wrong is at most this."""
STUCK_FLOOR = 1e-3
"""Smallest share of pulsed devices assumed not to move (stuck): bounds any one device's weight."""


class UndecidedBatch(ValueError):
    """The read-back cannot tell with enough confidence whether the pending batch was applied."""


@dataclass(frozen=True)
class BatchDecision:
    """What a resume concluded about a pending batch; ``devices_applied`` of ``devices`` (in the
    board's application order) were applied."""

    decision: str  # "applied" | "not applied" | "partly applied" | "assumed applied" | "assumed not applied"
    devices: int
    devices_applied: int
    journal: str  # what the host's journal said: "none", "sending" or "sent"
    log_odds: float
    error_probability: float
    llr_all_vs_none: float
    z: float
    z_expected: float
    max_error_probability: float = MAX_ERROR_PROBABILITY

    def record(self) -> dict:
        """For the run's metrics log (JSON: no NaN, None where the user decided)."""
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in asdict(self).items()}

    @property
    def assumed(self) -> bool:
        return self.decision.startswith("assumed")

    def describe(self) -> str:
        if self.assumed:
            return f"{self.decision} by the user ({self.devices} devices)"
        return (f"{self.decision} ({self.devices_applied} of {self.devices} devices, journal '{self.journal}'; "
                f"log-odds {self.log_odds:.1f}, "
                f"error probability {self.error_probability:.1e}; all-vs-none log-LR {self.llr_all_vs_none:.1f}, "
                f"z = {self.z:.1f} of {self.z_expected:.1f} expected if applied)")


@dataclass(frozen=True)
class ReadBackModel:
    """The calibrated figures the decision needs (from a :class:`~calibration.report.CalibrationReport`)."""

    cmap: ConductanceMap
    read_noise_rel: float
    g_lsb_s: float
    write_noise_sigma_s: float
    c2c_sigma_rel: float
    d2d_cv: float
    stuck_fraction: float

    @classmethod
    def from_calibration(cls, cal, cmap: ConductanceMap, g_lsb_s: float) -> "ReadBackModel":
        c2c_rel = cal.c2c_sigma_rel
        if c2c_rel is None:
            c2c_rel = cal.c2c_sigma_s / cal.pulse_step_mean_s["set"]
        return cls(cmap, float(cal.read_noise_rel), float(g_lsb_s), float(cal.write_noise_sigma_s), float(c2c_rel),
                   float(cal.d2d_cv), max(float(cal.stuck_fraction), STUCK_FLOOR))

    def read_var(self, g: np.ndarray) -> np.ndarray:
        return (self.read_noise_rel * np.abs(g)) ** 2 + self.g_lsb_s**2 / 12

    def expected_change(self, g0: np.ndarray, counts: np.ndarray, last_frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean change of each device's pulses and the summed variance of their steps (cycle to cycle)."""
        c = self.cmap
        n = np.abs(counts)
        g = g0.astype(float).copy()
        step_var = np.zeros_like(g)
        set_ = counts > 0
        for j in range(int(n.max(initial=0))):  # over pulse index, vectorised over devices
            frac = np.where(j == n - 1, last_frac, 1.0) * (j < n)
            step = np.where(set_, c.step_set_s(g), c.step_reset_s(g)) * frac
            step_var += (self.c2c_sigma_rel * step) ** 2
            g = np.clip(g + np.where(set_, step, -step), c.g_min_s, c.g_max_s)
        return g - g0, step_var


def _log_normal(d: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    return -0.5 * ((d - mu) ** 2 / var + np.log(2 * np.pi * var))


JOURNAL_RANGE = {"none": lambda n: (0, 0), "sending": lambda n: (0, n), "sent": lambda n: (n, n)}


def decide(model: ReadBackModel, g_before: np.ndarray, g_after: np.ndarray, counts: np.ndarray,
           last_frac: np.ndarray, order: np.ndarray, journal: str = "sending") -> BatchDecision:
    """How many devices of the batch (a prefix of ``order``) the change ``g_after - g_before`` says were applied.

    All arrays are per device of the batch; ``order``: positions in application order;
    ``last_frac``: each device's last pulse width over its profile width (1: a full pulse);
    ``journal``: the host's journal state, which bounds the possible ``k`` (:data:`JOURNAL_RANGE`).
    """
    g0, g1 = np.asarray(g_before, float)[order], np.asarray(g_after, float)[order]
    cnt, frac = np.asarray(counts)[order], np.asarray(last_frac, float)[order]
    d = g1 - g0
    mu, step_var = model.expected_change(g0, cnt, frac)
    v_not = model.read_var(g0) + model.read_var(g1)
    v_app = v_not + step_var + 2 * model.write_noise_sigma_s**2 + (model.d2d_cv * mu) ** 2
    eps = model.stuck_fraction
    log_not = _log_normal(d, 0.0, v_not)
    log_app = np.logaddexp(np.log1p(-eps) + _log_normal(d, mu, v_app), np.log(eps) + log_not)
    llr = log_app - log_not
    s = np.concatenate([[0.0], np.cumsum(llr)])  # log-likelihood of "the first k applied", up to a constant
    lo, hi = JOURNAL_RANGE[journal](llr.size)
    if s.max() - s[lo:hi + 1].max() > -np.log(MAX_ERROR_PROBABILITY):  # the read-back refutes the journal
        return BatchDecision(decision=f"contradicts the journal ('{journal}')", devices=int(llr.size),
                             devices_applied=int(np.argmax(s)), journal=journal, log_odds=float("nan"),
                             error_probability=1.0, llr_all_vs_none=float(s[-1]), z=float("nan"),
                             z_expected=float("nan"))
    possible = s[lo:hi + 1]
    k = lo + int(np.argmax(possible))
    log_post = possible - np.logaddexp.reduce(possible)
    log_rest = np.logaddexp.reduce(np.delete(log_post, k - lo))  # log P(any other k): the error, no 1 - p rounding
    error = float(np.exp(log_rest))
    z_den = float(np.sqrt(np.sum(mu**2 * v_not))) or 1.0
    n = int(cnt.size)
    decision = "not applied" if k == 0 else "applied" if k == n else "partly applied"
    return BatchDecision(decision=decision, devices=n, devices_applied=k, journal=journal,
                         log_odds=float(log_post[k - lo] - log_rest),
                         error_probability=error, llr_all_vs_none=float(s[-1]),
                         z=float(np.sum(d * mu) / z_den), z_expected=float(np.sum(mu**2) / z_den))


def assumed(applied: bool, n_devices: int) -> BatchDecision:
    """The user's word on a pending batch (``--assume-applied`` / ``--assume-not-applied``)."""
    return BatchDecision(decision="assumed applied" if applied else "assumed not applied", devices=n_devices,
                         devices_applied=n_devices if applied else 0, journal="sending", log_odds=float("nan"),
                         error_probability=float("nan"), llr_all_vs_none=float("nan"), z=float("nan"),
                         z_expected=float("nan"))
