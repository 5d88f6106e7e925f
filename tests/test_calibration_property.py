"""Calibration holds on any plausible device: a property test over device parameter sets.

Hypothesis draws device parameter sets and seeds from the plausible ranges
(gamma 1-2 per polarity, sigma_d2d 0-0.5, sigma_bound 0-0.15, stuck 0-10 %, sigma_w
0.2-3 uS, c2c 0.3-2, read noise 0.2-5 %, drift mu 0-0.3 uS) and calibrates each on a
48x48 emulator with reduced procedures (``REDUCED`` below: read noise 256 devices,
pulse response 432 devices x 24 events per curve (growing from 8 pulses to 4096 in all),
write noise 384 devices with n in {1, 2, 4, 8, 16} x 8 cycles -- more devices (up to 6x,
as many as the array has) and more reads when the measured noise asks for them --, drift
384 devices, 100 bootstrap resamples), derandomized, 50 examples.

Asserted: no crash in any set (the property test), and in every set the issue's tolerances for sigma_w (10 %),
the relative cycle-to-cycle spread (15 %), read noise and drift mu (20 %; drift only
where mu >= 0.03 uS, below which 20 % is under the measurement's resolution), the mean
step per pulse at mid-window (10 %) and the stuck fraction (0.5 percentage points).  Over
all sets, the true value lies within the reported 2 sigma for at least 90 % of them, for
each of these quantities.

sigma_w: the write-noise stage's moment fit alone missed by -18 %, +25 % and -22 % in 3 of the 50
sets (sigma_w = 0.2 uS next to a large cycle-to-cycle spread or read noise and sigma_r0 = 0.4 uS,
where sigma_w^2 is a few % of one event's change variance; pinned as a strict xfail until then).
With the random walk of single partial-pulse events (:mod:`calibration.write_walk`) combined
with it, the worst sigma_w errors over the 50 sets are +3.9 %, -2.9 %, -2.1 % (the +3.9 % at
sigma_w = 2.8 uS, where the moment fit itself is +4.2 % off and the window holds the walk to 16
events: 3.2 reported sigma) and the truth lies within 2 reported sigma in 96 % of them (92 %
before); the walk costs ~3 % of the test's CPU time (100 -> 103 s user back to back on a
machine shared with other jobs; 102 -> 119 s wall).  Coverage of the reported 2 sigma: the relative cycle-to-cycle spread 92 %
(88 % before its errors were widened by the moment fit's Birge ratio), the SET step 96 %
(84 % before the mean step factor used the whole write-noise sample and the step's error
carried the gamma fitted through a clipped bound): the 2 sets outside are one seed whose
sampled devices' own mean step is +4.7-5.0 % off the array's, a 2.1-2.2 sigma draw that the
reported error describes.  The derandomized draws come in clusters that share a seed (and
so one realization of the array's noise and one device sample), so one unlucky
realization fails several sets at once; which mutations of the last cluster are drawn
changes with the code under test (the last 5 of the 50 did between commits).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from calibration.drift import DriftParams
from calibration.pulse_response import PulseResponseParams
from calibration.read_noise import ReadNoiseParams
from calibration.run import CalibrationParams, calibrate
from calibration.write_noise import WriteNoiseParams
from drivers.address import open_board

pytestmark = pytest.mark.slow

SIZE = 48
N_EXAMPLES = 50
REDUCED = dict(
    read_noise=ReadNoiseParams(n_devices=256),
    pulse_response=PulseResponseParams(n_devices=432, steps=24, n_boot=100),
    write_noise=WriteNoiseParams(n_devices=384, pulse_counts=(1, 2, 4, 8, 16), cycles=8, n_boot=100),
    drift=DriftParams(n_devices=384, n_reads=8),
    plots=False,
)
# (report getter, truth key, uncertainty key, relative tolerance) per quantity
QUANTITIES = {
    "sigma_w": (lambda r: r.write_noise_sigma_s, "sigma_w_s", "write_noise_sigma_s", 0.10),
    "c2c_rel": (lambda r: r.c2c_sigma_rel, "sigma_c2c", "c2c_sigma_rel", 0.15),
    "read_noise": (lambda r: r.read_noise_rel, "read_noise_rel", "read_noise_rel", 0.20),
    "drift_mu": (lambda r: r.drift.mu_s, "relax_mu_s", "drift.mu_s", 0.20),
    "step_set": (lambda r: r.pulse_step_mean_s["set"], "mean_set_step_mid_s", "pulse_step_mean_s.set", 0.10),
    "step_reset": (lambda r: r.pulse_step_mean_s["reset"], "mean_reset_step_mid_s", "pulse_step_mean_s.reset", 0.10),
}
RESULTS: list[dict] = []  # one entry per calibrated set, filled by the property test

devices = st.fixed_dictionaries({
    "gamma_set": st.floats(1.0, 2.0), "gamma_reset": st.floats(1.0, 2.0),
    "sigma_d2d": st.floats(0.0, 0.5), "sigma_bound": st.floats(0.0, 0.15),
    "stuck_fraction": st.floats(0.0, 0.10), "sigma_w_s": st.floats(0.2e-6, 3e-6),
    "sigma_c2c": st.floats(0.3, 2.0), "read_noise_rel": st.floats(0.002, 0.05),
    "relax_mu_s": st.floats(0.0, 0.3e-6),
})


def _calibrate(tmp_path, values: dict, seed: int):
    cfg = tmp_path / f"device-{seed}.toml"
    cfg.write_text("".join(f"{k} = {v!r}\n" for k, v in values.items()))
    with open_board(f"emu?rows={SIZE}&cols={SIZE}&seed={seed}&config={cfg}") as board:
        report = calibrate(board, tmp_path / f"out-{seed}-{len(RESULTS)}", CalibrationParams(seed=seed, **REDUCED),
                           progress=False)
        truth = board.true_parameters()
    return report, truth


def _judged(name: str, truth: dict) -> bool:
    return not (name == "drift_mu" and truth["relax_mu_s"] < 0.03e-6)


@pytest.mark.timeout(3600)  # a hang guard: 50 calibrations take ~2 min of CPU, longer on a loaded machine
@settings(max_examples=N_EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=(Phase.explicit, Phase.generate))  # no shrinking: each example is a calibration
@given(values=devices, seed=st.integers(0, 2**16))
def test_calibration_never_crashes_and_stays_within_tolerance(tmp_path_factory, values, seed):
    report, truth = _calibrate(tmp_path_factory.mktemp("prop"), values, seed)
    row = {"values": values, "seed": seed}
    for name, (get, true_key, unc_key, tol) in QUANTITIES.items():
        measured, true, sigma = get(report), truth[true_key], report.uncertainty[unc_key]
        row[name] = dict(err=measured / true - 1 if true else math.nan, z=(measured - true) / sigma if sigma else math.inf,
                         judged=_judged(name, truth), tol=tol)
    row["stuck_pp"] = 100 * (report.stuck_fraction - truth["stuck_fraction_actual"])
    row["stuck_z"] = ((report.stuck_fraction - truth["stuck_fraction_actual"])
                      / max(report.uncertainty["stuck_fraction"], 1e-12))
    RESULTS.append(row)  # judged by the tests below, so that one run gives the pass rate of every quantity


def _need_results() -> None:
    if len(RESULTS) < 20:
        pytest.fail(f"only {len(RESULTS)} calibrated sets recorded (the property test must run first, in full)")


def _known(name: str, failing: dict[str, str]):
    """``name`` as a parameter, a strict xfail where ``failing`` names it (the reason states the numbers)."""
    return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=failing[name])) if name in failing else name


TOLERANCE_FAILS: dict[str, str] = {}
COVERAGE_FAILS: dict[str, str] = {}


@pytest.mark.parametrize("name", [_known(n, TOLERANCE_FAILS) for n in QUANTITIES] + ["stuck"])
def test_within_tolerance_in_every_set(name):
    _need_results()
    if name == "stuck":
        bad = [(r["stuck_pp"], r["values"], r["seed"]) for r in RESULTS if abs(r["stuck_pp"]) > 0.5]
    else:
        bad = [(r[name]["err"], r["values"], r["seed"]) for r in RESULTS
               if r[name]["judged"] and not abs(r[name]["err"]) <= r[name]["tol"]]
    assert not bad, f"{name}: {len(bad)} of {len(RESULTS)} sets outside tolerance, e.g. {bad[:3]}"


def _coverage(name: str) -> tuple[float, int]:
    judged = [r[name] for r in RESULTS if r[name]["judged"]]
    return sum(abs(q["z"]) <= 2 for q in judged) / max(len(judged), 1), len(judged)


@pytest.mark.parametrize("name", [_known(n, COVERAGE_FAILS) for n in QUANTITIES] + ["stuck"])
def test_reported_two_sigma_covers_the_truth_in_90_percent_of_sets(name):
    _need_results()
    if name == "stuck":
        frac, n = sum(abs(r["stuck_z"]) <= 2 for r in RESULTS) / len(RESULTS), len(RESULTS)
    else:
        frac, n = _coverage(name)
    assert n >= 20 and frac >= 0.90, f"{name}: truth within 2 sigma in {100 * frac:.0f} % of {n} sets"
