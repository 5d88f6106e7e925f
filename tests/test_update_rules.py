"""Properties of the update rules in ``hil.update_rules``.

Statistical checks compare an empirical mean of R independent draws with its
expectation using Bernstein's inequality: for i.i.d. X with |X - μ| <= b and
variance σ², P(|mean - μ| >= t) <= 2 exp(-R t² / (2σ² + 2bt/3)). Solving for the
t that makes this DELTA gives a tolerance derived from the exact variance that
holds for any p (no normal approximation). With DELTA = 1e-10 per comparison and
a few thousand comparisons per run, a false failure has probability < 1e-6; on
top of that every generator is seeded and hypothesis is derandomised, so the
tests are deterministic and cannot flake.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.update_rules import (
    BP,
    BPPulses,
    RULES,
    EaPU,
    Float,
    Manhattan,
    Mixed,
    Stochastic,
    UpdatePlan,
    WidthGrid,
    directional_step,
    make_rule,
)

DELTA = 1e-10
R = 20_000  # repetitions for the statistical checks
US = 1e-6  # one microsiemens

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def bernstein_tol(var, b, n, delta=DELTA):
    """Half-width t with P(|mean of n draws - μ| >= t) <= delta (Bernstein)."""
    var = np.asarray(var, dtype=float)
    b = np.asarray(b, dtype=float)
    L = np.log(2.0 / delta)
    lin = 2.0 * b * L / 3.0
    return (lin + np.sqrt(lin**2 + 8.0 * n * L * var)) / (2.0 * n)


# ----------------------------------------------------------------- strategies

mag = st.floats(0.0, 5.0, allow_nan=False, allow_infinity=False)
dg_values = st.one_of(st.just(0.0), st.floats(-5.0, 5.0, allow_nan=False, allow_infinity=False))


@st.composite
def device_case(draw, max_n=12):
    """(ΔG, per-device step, ΔGth, seed) in siemens, realistic µS scale."""
    n = draw(st.integers(1, max_n))
    dg = np.array(draw(st.lists(dg_values, min_size=n, max_size=n))) * US
    step = np.array(draw(st.lists(st.floats(0.2, 1.0), min_size=n, max_size=n))) * US
    th = draw(st.floats(0.3, 3.0)) * US
    seed = draw(st.integers(0, 2**32 - 1))
    return dg, step, th, seed


def tiled(dg, step, reps=R):
    return np.broadcast_to(dg, (reps, dg.size)), np.broadcast_to(step, (reps, dg.size))


# ----------------------------------------------------------------- EaPU


@SETTINGS
@given(device_case())
def test_eapu_unbiased_subquantum_and_rounded_supra(case):
    dg, step, th, seed = case
    rule = EaPU(th, max_pulses=1000)
    q = rule.quantum_pulses(step) * step
    p = np.minimum(1.0, np.abs(dg) / q)
    plan = rule.plan(*tiled(dg, step), np.random.default_rng(seed))
    mean = plan.applied_target_s.mean(axis=0)

    sub = np.abs(dg) < q
    # sub-quantum: applied ∈ {0, sign·q}, mean ΔG exactly, variance q² p (1-p)
    tol = bernstein_tol(q**2 * p * (1 - p), q, R)
    assert np.all(np.abs(mean[sub] - dg[sub]) <= tol[sub] + 1e-18)
    # supra-quantum: always kept, deterministic round(ΔG/step) pulses, error <= step/2
    expected = np.rint(dg / step) * step
    assert np.array_equal(plan.applied_target_s[:, ~sub], np.broadcast_to(expected, (R, dg.size))[:, ~sub])
    assert np.all(np.abs(expected[~sub] - dg[~sub]) <= step[~sub] / 2 + 1e-18)


@SETTINGS
@given(device_case())
def test_eapu_stochastic_supra_rounding_is_unbiased_everywhere(case):
    dg, step, th, seed = case
    rule = EaPU(th, max_pulses=1000, supra_rounding="stochastic")
    q = rule.quantum_pulses(step) * step
    p = np.minimum(1.0, np.abs(dg) / q)
    x = np.abs(dg) / step
    f = x - np.floor(x)
    var = np.where(np.abs(dg) < q, q**2 * p * (1 - p), step**2 * f * (1 - f))
    plan = rule.plan(*tiled(dg, step), np.random.default_rng(seed))
    mean = plan.applied_target_s.mean(axis=0)
    assert np.all(np.abs(mean - dg) <= bernstein_tol(var, q, R) + 1e-18)


@SETTINGS
@given(device_case())
def test_eapu_keep_probability(case):
    dg, step, th, seed = case
    rule = EaPU(th, max_pulses=1000)
    p = rule.keep_probability(dg, step)
    n_th = rule.quantum_pulses(step)
    assert np.allclose(p, np.minimum(1.0, np.abs(dg) / (n_th * step)), rtol=1e-12, atol=0)
    plan = rule.plan(*tiled(dg, step), np.random.default_rng(seed))
    frac = plan.kept.mean(axis=0)
    assert np.all(np.abs(frac - p) <= bernstein_tol(p * (1 - p), 1.0, R))
    assert not plan.kept[:, dg == 0].any()


@SETTINGS
@given(st.integers(1, 6), st.floats(0.2, 1.0), st.lists(mag, min_size=1, max_size=10), st.integers(0, 2**32 - 1))
def test_eapu_whole_step_threshold_matches_published_rule(k, step_us, mags, seed):
    """ΔGth = k steps: quantum == ΔGth, keep prob == min(1, |ΔG|/ΔGth), sub-threshold -> ΔGth."""
    step = step_us * US
    th = k * step
    dg = np.array(mags) * US * np.where(np.arange(len(mags)) % 2, -1, 1)
    rule = EaPU(th, max_pulses=50)
    assert np.all(rule.quantum_pulses(step) == k)
    assert np.allclose(rule.keep_probability(dg, step), np.minimum(1.0, np.abs(dg) / th), rtol=1e-12)
    plan = rule.plan(*tiled(dg, np.full(dg.shape, step), 2000), np.random.default_rng(seed))
    sub_kept = plan.kept & (np.abs(dg) < th)
    assert np.allclose(np.abs(plan.applied_target_s[sub_kept]), th, rtol=1e-12)


@SETTINGS
@given(device_case(max_n=32), st.integers(1, 8))
def test_eapu_structural_invariants(case, max_pulses):
    dg, step, th, seed = case
    rule = EaPU(th, max_pulses=max_pulses)
    plan = rule.plan(*tiled(dg, step, 200), np.random.default_rng(seed))
    assert isinstance(plan, UpdatePlan)
    assert plan.pulses.dtype == np.int64 and plan.pulses.shape == (200, dg.size)
    assert np.all(plan.pulses[~plan.kept] == 0)  # not kept -> exactly no write
    assert np.all(np.abs(plan.pulses[plan.kept]) >= 1)  # kept -> at least one pulse
    assert np.all(np.abs(plan.pulses) <= max_pulses)
    assert np.all(np.sign(plan.pulses) == np.where(plan.kept, np.sign(dg), 0))
    assert np.allclose(plan.applied_target_s, plan.pulses * step, rtol=0, atol=0)


def test_eapu_write_fraction_matches_mean_keep_probability():
    rng = np.random.default_rng(1234)
    n = 200_000
    dg = rng.normal(0.0, 0.5, n) * US  # typical: mostly sub-threshold
    step = rng.uniform(0.3, 0.7, n) * US
    rule = EaPU(1.0 * US, max_pulses=20)
    p = rule.keep_probability(dg, step)
    plan = rule.plan(dg, step, np.random.default_rng(99))
    # independent, non-identical Bernoullis: Bernstein with the mean variance
    tol = bernstein_tol(np.mean(p * (1 - p)), 1.0, n)
    assert abs(plan.write_fraction - p.mean()) <= tol
    assert plan.n_written == plan.kept.sum()
    assert plan.n_pulses == np.abs(plan.pulses).sum()


def test_eapu_quantum_capped_by_max_pulses_stays_unbiased():
    step = np.full(8, 0.1 * US)
    th = 3.0 * US  # 30 pulses, capped at 5 -> quantum 0.5 µS
    dg = np.linspace(-0.45, 0.45, 8) * US
    rule = EaPU(th, max_pulses=5)
    assert np.all(rule.quantum_pulses(step) == 5)
    plan = rule.plan(*tiled(dg, step), np.random.default_rng(7))
    q = 5 * step
    p = np.abs(dg) / q
    assert np.all(np.abs(plan.applied_target_s.mean(0) - dg) <= bernstein_tol(q**2 * p * (1 - p), q, R))


def test_eapu_rng_consumption_is_data_independent_and_reproducible():
    a = np.linspace(-3, 3, 50) * US
    b = np.zeros(50)
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    EaPU(1 * US).plan(a, 0.5 * US, r1)
    EaPU(1 * US).plan(b, 0.5 * US, r2)
    assert r1.random() == r2.random()
    p1 = EaPU(1 * US).plan(a, 0.5 * US, np.random.default_rng(3))
    p2 = EaPU(1 * US).plan(a, 0.5 * US, np.random.default_rng(3))
    assert np.array_equal(p1.pulses, p2.pulses)
    rng = np.random.default_rng(3)
    small = np.full(1000, 0.3 * US)
    assert not np.array_equal(EaPU(1 * US).plan(small, 0.5 * US, rng).pulses,
                              EaPU(1 * US).plan(small, 0.5 * US, rng).pulses)


def test_eapu_per_device_threshold_and_matrix_shape():
    dg = np.array([[0.2, -0.2], [2.0, -2.0]]) * US
    th = np.array([[1.0, 1.0], [4.0, 1.0]]) * US
    plan = EaPU(th, max_pulses=10).plan(dg, 0.5 * US, np.random.default_rng(0))
    assert plan.pulses.shape == (2, 2)
    assert plan.pulses[1, 1] == -4  # supra-threshold, written as asked


# ----------------------------------------------------------------- baselines


@SETTINGS
@given(device_case(max_n=32), st.integers(1, 20))
def test_bp_pulses_touches_every_nonzero_device(case, max_pulses):
    dg, step, _, _ = case
    plan = BPPulses(max_pulses).plan(dg, step)
    assert np.array_equal(plan.kept, dg != 0)
    assert np.array_equal(np.sign(plan.pulses), np.sign(dg).astype(np.int64))
    expect = np.clip(np.maximum(1, np.rint(np.abs(dg) / step)), 1, max_pulses) * (dg != 0)
    assert np.array_equal(np.abs(plan.pulses), expect.astype(np.int64))


@SETTINGS
@given(device_case(max_n=32), st.integers(1, 20))
def test_bp_writes_every_nonzero_device_as_asked(case, max_pulses):
    """Without a width grid: one write event per non-zero ΔG, exactly (n + f) * step = |ΔG|."""
    dg, step, _, seed = case
    plan = BP(max_pulses).plan(dg, step, np.random.default_rng(seed))
    assert np.array_equal(plan.kept, dg != 0)
    total = plan.pulses + plan.partial_frac
    assert np.all(np.sign(total) == np.sign(dg))
    assert np.all((np.abs(plan.partial_frac) < 1) & (plan.pulses * plan.partial_frac >= 0))
    want = np.sign(dg) * np.minimum(np.abs(dg) / step, max_pulses)
    assert np.allclose(total, want, rtol=1e-12, atol=1e-12)
    assert np.allclose(plan.applied_target_s, want * step, rtol=1e-12, atol=1e-24)
    assert np.all(np.abs(plan.pulses) + (plan.partial_frac != 0) <= max_pulses)


@SETTINGS
@given(device_case(max_n=8), st.integers(1, 12), st.integers(0, 12))
def test_bp_on_a_width_grid_is_unbiased(case, quantum_div, min_quanta):
    """On a board's width grid the partial pulse is rounded stochastically: E[applied] = ΔG,
    every width is a grid point at or above the minimum, and only requests below the
    shortest pulse can go unwritten."""
    dg, step, _, seed = case
    q = 1.0 / (4 * quantum_div)
    m = min_quanta * q
    grid = WidthGrid(q, m)
    plan = BP(1000).plan(*tiled(dg, step), np.random.default_rng(seed), grid)
    f = np.abs(plan.partial_frac)
    ticks = f / q
    assert np.allclose(ticks, np.rint(ticks), atol=1e-6)
    assert np.all((f == 0) | (f >= max(m, q) * (1 - 1e-9)))
    x = np.abs(dg) / step
    m_eff = max(min_quanta, 1) * q
    assert np.all(plan.kept[:, (x >= m_eff) & (dg != 0)])
    assert not plan.kept[:, dg == 0].any()
    # the applied change per draw lies within one grid cell (or [0, m_eff]) of the request
    width = max(q, m_eff)
    var = (width * step) ** 2 / 4
    tol = bernstein_tol(var, width * step, R)
    assert np.all(np.abs(plan.applied_target_s.mean(axis=0) - dg) <= tol + 1e-18)


def test_bp_small_requests_no_longer_become_whole_pulses():
    """The overshoot that made plain BP sign-SGD: a 0.043-step request was one whole pulse."""
    dg = np.full(50_000, 0.043 * US)
    whole = BPPulses(64).plan(dg, 1 * US)
    assert np.all(whole.applied_target_s == 1 * US)
    plan = BP(64).plan(dg, 1 * US, np.random.default_rng(3), WidthGrid(1 / 50, 1 / 50))
    assert plan.write_fraction == 1.0 and plan.n_pulses == dg.size and not plan.pulses.any()
    assert set(np.unique(plan.partial_frac)) == {0.04, 0.06}
    assert abs(plan.applied_target_s.mean() / (0.043 * US) - 1) < 0.01


@SETTINGS
@given(st.lists(st.lists(dg_values, min_size=6, max_size=6), min_size=1, max_size=30),
       st.floats(0.2, 1.0), st.integers(1, 1000))
def test_mixed_conserves_accumulated_change(steps, step_us, max_pulses):
    rule = Mixed(max_pulses=max_pulses)
    step = step_us * US
    total_asked = np.zeros(6)
    total_applied = np.zeros(6)
    for row in steps:
        dg = np.array(row) * US
        plan = rule.plan(dg, step)
        total_asked += dg
        total_applied += plan.applied_target_s
        assert np.array_equal(np.sign(plan.pulses[plan.kept]), np.sign(plan.applied_target_s[plan.kept]))
    scale = max(1.0, np.abs(total_asked).max() / US, len(steps)) * US
    assert np.allclose(rule.chi_s + total_applied, total_asked, rtol=0, atol=1e-12 * scale)


@SETTINGS
@given(st.lists(st.lists(st.integers(-4000, 4000), min_size=5, max_size=5), min_size=1, max_size=40),
       st.integers(-12, -8), st.integers(1, 30))
def test_mixed_conservation_is_exact_on_dyadic_values(steps, log2_eps, max_pulses):
    """With power-of-two ε and dyadic ΔG every float operation is exact: equality holds."""
    eps = 2.0**log2_eps
    rule = Mixed(max_pulses=max_pulses, shape=(5,))
    asked = np.zeros(5)
    applied = np.zeros(5)
    for row in steps:
        dg = np.array(row, dtype=float) * 2.0**-16
        plan = rule.plan(dg, eps)
        asked += dg
        applied += plan.applied_target_s
        assert np.array_equal(rule.chi_s + applied, asked)
        unclipped = np.abs(plan.pulses) < max_pulses
        assert np.all(np.abs(rule.chi_s[unclipped]) < eps)


def test_mixed_state_dict_round_trip():
    rng = np.random.default_rng(0)
    seq = [rng.normal(0, 0.3, (3, 4)) * US for _ in range(10)]
    a = Mixed(10)
    for dg in seq[:5]:
        a.plan(dg, 0.5 * US)
    state = a.state_dict()
    b = make_rule("mixed", **a.config())
    b.load_state_dict(state)
    state["chi_s"][:] = 123.0  # the rule must hold its own copy
    for dg in seq[5:]:
        assert np.array_equal(a.plan(dg, 0.5 * US).pulses, b.plan(dg, 0.5 * US).pulses)
    assert np.array_equal(a.chi_s, b.chi_s)
    with pytest.raises(ValueError):
        a.plan(np.zeros(5), 0.5 * US)
    a.reset()
    assert not a.chi_s.any()


@SETTINGS
@given(device_case(max_n=12), st.integers(0, 2**32 - 1))
def test_stochastic_is_unbiased(case, seed):
    dg, step, _, _ = case
    x = dg / step
    f = x - np.floor(x)
    plan = Stochastic(max_pulses=1000).plan(*tiled(dg, step), np.random.default_rng(seed))
    mean_pulses = plan.pulses.mean(axis=0)
    assert np.all(np.abs(mean_pulses - x) <= bernstein_tol(f * (1 - f), 1.0, R) + 1e-12)
    assert np.all((plan.pulses == np.floor(x)) | (plan.pulses == np.floor(x) + 1))


@SETTINGS
@given(device_case(max_n=32), st.floats(0.0, 2.0))
def test_manhattan_one_pulse_above_threshold(case, th_us):
    dg, step, _, _ = case
    th = th_us * US
    plan = Manhattan(th).plan(dg, step)
    above = np.abs(dg) > th
    assert np.array_equal(plan.pulses, np.where(above, np.sign(dg), 0).astype(np.int64))
    assert np.all(np.abs(plan.pulses) <= 1)


# ----------------------------------------------------------------- plumbing


def test_float_is_a_marker():
    rule = make_rule("float")
    assert isinstance(rule, Float) and rule.uses_array is False
    with pytest.raises(RuntimeError):
        rule.plan(np.zeros(3), 1.0, np.random.default_rng(0))
    assert all(RULES[n].uses_array for n in RULES if n != "float")


def test_make_rule_factory_and_config_round_trip():
    with pytest.raises(ValueError, match="bp, bp-pulses, eapu, float, manhattan, mixed, stochastic"):
        make_rule("sgd")
    with pytest.raises(TypeError, match="eapu"):
        make_rule("eapu", max_pulses=3)  # missing delta_g_th_s
    rules = [EaPU(1 * US, 7, "stochastic"), BP(9), BPPulses(5), Mixed(4), Manhattan(0.1 * US), Stochastic(3), Float()]
    for r in rules:
        clone = make_rule(r.name.upper(), **r.config())
        assert type(clone) is type(r) and clone.config() == r.config()
        assert repr(r).startswith(type(r).__name__)
    assert EaPU(np.array([1.0, 2.0]) * US).config()["delta_g_th_s"] == [1 * US, 2 * US]


def test_validation():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        EaPU(0.0)
    with pytest.raises(ValueError):
        EaPU(1 * US, max_pulses=0)
    with pytest.raises(ValueError):
        EaPU(1 * US, supra_rounding="up")
    with pytest.raises(ValueError):
        BP(2.5)
    with pytest.raises(TypeError, match="Generator"):
        BP(3).plan(np.zeros(2), 1 * US, None)
    with pytest.raises(ValueError, match="WidthGrid"):
        BP(3).plan(np.ones(2), 1 * US, rng, WidthGrid(0.0, 0.1))
    with pytest.raises(ValueError):
        Manhattan(-1.0)
    with pytest.raises(TypeError, match="Generator"):
        EaPU(1 * US).plan(np.zeros(2), 1 * US, None)
    with pytest.raises(TypeError, match="Generator"):
        Stochastic(3).plan(np.zeros(2), 1 * US, 42)
    for rule in (EaPU(1 * US), BP(), BPPulses(), Mixed(), Manhattan(), Stochastic()):
        with pytest.raises(ValueError, match="NaN"):
            rule.plan(np.array([np.nan]), 1 * US, rng)
        with pytest.raises(ValueError, match="step_s"):
            rule.plan(np.ones(2), np.array([1 * US, 0.0]), rng)
        with pytest.raises(ValueError, match="broadcast"):
            rule.plan(np.ones(2), np.ones(3), rng)
    with pytest.raises(ValueError, match="stateless"):
        BP().load_state_dict({"chi_s": 1})


def test_huge_requests_are_clipped_without_overflow():
    dg = np.array([1e3, -1e3, 1e-3])
    step = 1e-12
    for rule in (BP(50), BPPulses(50), Mixed(50), Stochastic(50), EaPU(1e-9, 50)):
        plan = rule.plan(dg, step, np.random.default_rng(0))
        assert np.array_equal(plan.pulses, [50, -50, 50])


def test_directional_step():
    dg = np.array([1.0, -1.0, 0.0])
    assert np.array_equal(directional_step(dg, 0.5, 0.6), [0.5, 0.6, 0.5])
    per_dev = directional_step(dg, np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0]))
    assert np.array_equal(per_dev, [1.0, 5.0, 3.0])
