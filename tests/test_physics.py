"""Every physical effect of the emulated array is present and measurable.

Statistical checks use fixed seeds and bounds of at least 5 standard errors of the
estimate, so they cannot flake; deterministic checks switch the relevant noise off.

One file for the one device model (docs/DESIGN.md "Emulated array"): each physical effect's
checks share its fixtures and the reference loop, and read in the order of the model's description.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_stub.array_model import MemristorArray
from firmware_stub.device_params import DeviceParams
from firmware_stub.normal_source import NormalSource, _unit_normal_table
from firmware_stub.program_verify import write_verify
from firmware_stub.reference_loop import apply_pulses_loop

SET = (1.6, 50e-9)
RESET = (-1.8, 50e-9)
ROWS = COLS = 128  # 16384 devices: standard errors of ~1 % of a spread
N_SIGMA = 5.0

NO_WRITE_ERROR = dict(sigma_w_s=0.0)  # tests of the pulse law alone: no persistent write error on top
QUIET = dict(sigma_w_s=0.0, relax_mu_s=0.0, relax_sigma0_s=0.0, relax_sigma1_s=0.0, read_noise_rel=0.0)


def make(seed: int = 1, rows: int = ROWS, cols: int = COLS, **overrides) -> MemristorArray:
    return MemristorArray(DeviceParams(**overrides), rows, cols, seed)


def everything(arr: MemristorArray) -> np.ndarray:
    return np.arange(arr.n_devices, dtype=np.int64)


def place_at_x(arr: MemristorArray, x: float) -> None:
    """Put every movable device at the fraction x of its own window."""
    p = arr.params
    arr.g[:] = np.where(arr.stuck, arr.g, p.g_min_s + x * (arr.g_max - p.g_min_s))


def pulse_all(arr: MemristorArray, count: int, set_profile=SET, reset_profile=RESET) -> np.ndarray:
    """Give every device ``count`` pulses; returns the change of the stored G."""
    before = arr.g.copy()
    arr.apply_pulses(everything(arr), np.full(arr.n_devices, count), set_profile, reset_profile)
    return arr.g - before


def assert_mean(samples: np.ndarray, expected: float, n_sigma: float = N_SIGMA) -> None:
    se = samples.std(ddof=1) / math.sqrt(samples.size)
    assert abs(samples.mean() - expected) <= n_sigma * se, (samples.mean(), expected, se)


# ---- soft bounds, asymmetry ------------------------------------------------------------
@pytest.mark.parametrize("polarity", [+1, -1])
def test_step_shrinks_towards_its_bound(polarity):
    steps = {}
    for x in (0.1, 0.9):
        arr = make(**NO_WRITE_ERROR)
        place_at_x(arr, x)
        delta = pulse_all(arr, polarity)[~arr.stuck]
        alpha = (arr.alpha_set if polarity > 0 else arr.alpha_reset)[~arr.stuck]
        expected = alpha.mean() * ((1 - x) if polarity > 0 else -x)
        assert_mean(delta, expected)
        steps[x] = abs(delta.mean())
    near, far = (0.9, 0.1) if polarity > 0 else (0.1, 0.9)
    assert steps[near] < steps[far] / 5  # 9x in expectation


def test_reset_set_asymmetry():
    up, down = make(**NO_WRITE_ERROR), make(**NO_WRITE_ERROR)
    for arr in (up, down):
        place_at_x(arr, 0.5)
    d_set = pulse_all(up, +1)[~up.stuck]
    d_reset = -pulse_all(down, -1)[~down.stuck]
    ok = ~up.stuck
    realised = up.alpha_reset[ok].mean() / up.alpha_set[ok].mean()
    assert realised == pytest.approx(up.params.reset_asymmetry, rel=0.02)
    ratio = d_reset.mean() / d_set.mean()
    rel_se = math.hypot(d_set.std() / d_set.mean(), d_reset.std() / d_reset.mean()) / math.sqrt(d_set.size)
    assert abs(ratio / realised - 1) <= N_SIGMA * rel_se


# ---- spreads ---------------------------------------------------------------------------
def test_device_to_device_spread_of_alpha():
    arr = make(sigma_c2c=0.0, **NO_WRITE_ERROR)
    place_at_x(arr, 0.5)
    alpha_measured = pulse_all(arr, +1)[~arr.stuck] / 0.5
    cv = alpha_measured.std() / alpha_measured.mean()
    assert abs(cv - 0.3) <= N_SIGMA * 0.3 * math.sqrt((1 + 2 * 0.3**2) / (2 * alpha_measured.size))
    assert cv == pytest.approx(arr.true_parameters()["d2d_cv_actual"], rel=1e-5)


@pytest.mark.parametrize("exact", [False, True])
def test_cycle_to_cycle_spread_per_pulse(exact):
    arr = MemristorArray(DeviceParams(sigma_d2d=0.0, **NO_WRITE_ERROR), ROWS, COLS, 2, exact_normals=exact)
    place_at_x(arr, 0.5)
    delta = pulse_all(arr, +1)[~arr.stuck]
    assert_mean(delta, 0.5 * arr.params.alpha_set_s)
    cv = delta.std() / delta.mean()
    assert abs(cv - 1.0) <= N_SIGMA * math.sqrt(1.5 / delta.size)  # se of a cv of 1


def test_fast_normal_table_is_a_standard_normal():
    table = _unit_normal_table()
    assert table.mean() == pytest.approx(0.0, abs=1e-12)
    assert (table**2).mean() == pytest.approx(1.0, rel=1e-12)
    xi = NormalSource(np.random.default_rng(0)).affine(1_000_000)
    for z, tail in ((1.0, 0.3173), (2.0, 0.0455), (3.0, 0.0027)):
        frac = np.mean(np.abs(xi) > z)
        assert abs(frac - tail) <= N_SIGMA * math.sqrt(tail * (1 - tail) / xi.size)


# ---- write noise, relaxation, read noise ----------------------------------------------
def write_event_without_change(arr: MemristorArray) -> np.ndarray:
    """A pulse below threshold: a write event whose mean change is zero (G moves by the write error alone).

    Returns the change of the stored G."""
    change = pulse_all(arr, +1, set_profile=(0.5, 50e-9))
    if arr.params.sigma_w_s == 0:
        assert not change.any()
    return change


def test_write_error_lands_in_the_stored_state_once_per_event():
    arr = make(**{**QUIET, "sigma_w_s": 1e-6})
    place_at_x(arr, 0.5)
    ok, idx = ~arr.stuck, everything(arr)
    g0 = arr.g.copy()
    before = arr.rng("pulse").bit_generator.state
    arr.apply_pulses(idx, np.full(arr.n_devices, 3), (0.5, 50e-9), RESET)  # 3 sub-threshold pulses, one event
    assert arr.rng("pulse").bit_generator.state != before  # the pulses were applied (and moved nothing)
    error = (arr.g - g0)[ok]
    assert abs(error.std() / 1e-6 - 1) <= N_SIGMA / math.sqrt(2 * error.size)  # one error, not three
    assert_mean(error, 0.0)
    np.testing.assert_array_equal(arr.g[~ok], g0[~ok])  # stuck devices take no error
    first, second = arr.read_g(idx), arr.read_g(idx)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, arr.g)  # the read sees the stored state, nothing on top
    write_event_without_change(arr)
    new_error = (arr.g - g0)[ok] - error  # the next event starts from the erred state
    assert abs(np.corrcoef(error, new_error)[0, 1]) <= N_SIGMA / math.sqrt(error.size)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_unverified_writes_random_walk(seed):
    """var(G_N - G_0) after N write events of zero mean change grows as N sigma_w^2."""
    sigma_w = 0.8e-6
    arr = make(seed=seed, **{**QUIET, "sigma_w_s": sigma_w, "relax_sigma0_s": 0.4e-6})
    place_at_x(arr, 0.5)  # ~49 uS from either bound: no clipping within 4.5 sigma of a 16-step walk
    ok, idx = ~arr.stuck, everything(arr)
    y0 = arr.read_g(idx)[ok]
    walks = {}
    for n in range(1, 17):
        write_event_without_change(arr)
        if n in (1, 4, 16):
            walks[n] = arr.read_g(idx)[ok] - y0
    for n, d in walks.items():
        # reads see the walk plus two relaxation offsets (one per read), which do not accumulate
        expected = n * sigma_w**2 + 2 * 0.4e-6**2 * (1.0 if n else 0.0)
        se = math.sqrt(2.0 / d.size) * expected  # normal: var of a variance
        assert abs(d.var() - expected) <= N_SIGMA * se, (n, d.var(), expected)
    growth = walks[16].var() / walks[4].var()
    assert 2.5 < growth < 4.5  # (16 + 0.5) / (4 + 0.5) = 3.7 for these figures


def test_write_verify_converges_despite_the_persistent_error():
    arr = make(seed=5, rows=32, cols=32, stuck_fraction=0.0, sigma_w_s=1.5e-6)
    idx = everything(arr)
    targets = np.full(arr.n_devices, 40e-6)
    res = write_verify(arr, idx, targets, 1.5e-6, 100, SET, RESET)
    assert res[1].mean() >= 0.99
    assert np.all(np.abs(res[0][res[1]] - 40e-6) <= 1.5e-6)


def test_relaxation_drifts_with_log_time_on_the_virtual_clock():
    arr = make(**{**QUIET, "relax_mu_s": 0.09e-6, "relax_sigma0_s": 0.4e-6, "relax_sigma1_s": 0.04e-6})
    place_at_x(arr, 0.5)
    write_event_without_change(arr)
    ok, idx = ~arr.stuck, everything(arr)
    shifts = []
    for wait_sec in (0.0, 3600.0, 30 * 86400.0):  # a month, in a blink
        arr.advance(wait_sec)
        log_t = math.log1p(arr.clock_sec - arr.t_w[0])
        shift = (arr.read_g(idx) - arr.g)[ok]
        assert_mean(shift, -0.09e-6 * log_t)
        spread = 0.4e-6 + 0.04e-6 * log_t
        assert abs(shift.std() / spread - 1) <= N_SIGMA / math.sqrt(2 * shift.size)
        shifts.append(shift.mean())
    assert shifts[0] > shifts[1] > shifts[2]


def test_read_noise_is_fresh_and_relative():
    arr = make(**{**QUIET, "read_noise_rel": 0.01})
    place_at_x(arr, 0.5)
    idx = everything(arr)
    a, b = arr.read_g(idx), arr.read_g(idx)
    rel = a / arr.g - 1
    assert abs(rel.std() / 0.01 - 1) <= N_SIGMA / math.sqrt(2 * rel.size)
    assert_mean(rel, 0.0)
    assert np.mean(a != b) > 0.99


def test_read_region_matches_flat_reads():
    arr = make(**QUIET)
    region = arr.read_region(3, 5, 4, 6)
    rows, cols = np.meshgrid(np.arange(3, 7), np.arange(5, 11), indexing="ij")
    np.testing.assert_array_equal(region, arr.read_g((rows * arr.cols + cols).ravel()).reshape(4, 6))


# ---- defects and wear --------------------------------------------------------------------
def test_stuck_devices_ignore_pulses_but_count_them():
    arr = make(stuck_fraction=0.2, stuck_high_share=0.5, read_noise_rel=0.0)
    stuck = arr.stuck_factory
    assert abs(stuck.mean() - 0.2) <= N_SIGMA * math.sqrt(0.2 * 0.8 / stuck.size)
    high = stuck & (arr.g == arr.g_max)
    low = stuck & (arr.g == arr.params.g_min_s)
    np.testing.assert_array_equal(high | low, stuck)
    assert abs(high.sum() / stuck.sum() - 0.5) <= N_SIGMA * math.sqrt(0.25 / stuck.sum())
    g0 = arr.g.copy()
    counts = np.where(np.arange(arr.n_devices) % 2 == 0, 7, -7)
    arr.apply_pulses(everything(arr), counts, SET, RESET)
    np.testing.assert_array_equal(arr.g[stuck], g0[stuck])
    assert np.all(arr.n_pulses == 7)
    assert np.all(arr.g[~stuck] != g0[~stuck])
    np.testing.assert_array_equal(arr.read_g(np.flatnonzero(stuck)), g0[stuck])  # no offset, no drift


def test_wear_narrows_the_window_then_sticks_the_device():
    n_end = 100
    arr = make(rows=16, cols=16, alpha_set_s=20e-6, sigma_c2c=0.2, stuck_fraction=0.0, sigma_w_s=0.0,
               endurance_pulses=n_end, wear_window_loss=0.5)
    window = arr.g_max - arr.params.g_min_s
    pulse_all(arr, n_end)  # saturates, no wear yet
    assert np.all(arr.g > arr.g_max - 0.02 * window)
    pulse_all(arr, n_end // 2)  # pulse 150: a quarter of the window lost
    bound = arr.g_max - 0.25 * window
    assert np.all(arr.g <= bound * (1 + 1e-12))
    assert np.all(arr.g > bound - 0.02 * window)
    assert not arr.worn_out.any()
    pulse_all(arr, n_end // 2)  # pulse 200 = 2 N_end: the last one
    assert arr.worn_out.all()
    frozen = arr.g.copy()
    assert np.all(frozen <= arr.g_max - 0.5 * window * (1 - 1e-12))
    pulse_all(arr, -10)
    np.testing.assert_array_equal(arr.g, frozen)
    assert arr.true_parameters()["worn_out_fraction"] == 1.0


# ---- pulse amplitude and width ---------------------------------------------------------
def test_pulse_amplitude_and_width_scale_the_step():
    def mean_step(set_profile=SET, reset_profile=RESET, count=+1):
        arr = make(sigma_c2c=0.0, **NO_WRITE_ERROR)
        place_at_x(arr, 0.5)
        return pulse_all(arr, count, set_profile, reset_profile)[~arr.stuck]

    nominal = mean_step()
    assert np.all(mean_step((0.79, 50e-9)) == 0)  # below the 0.8 V SET threshold
    assert np.all(mean_step(reset_profile=(-0.85, 50e-9), count=-1) == 0)  # above -0.9 V
    np.testing.assert_allclose(mean_step((2.0, 50e-9)), nominal * ((2.0 - 0.8) / 0.8) ** 2, rtol=1e-6)
    np.testing.assert_allclose(mean_step((1.6, 100e-9)), nominal * 2, rtol=1e-6)


# ---- VMM -----------------------------------------------------------------------------------
def test_vmm_is_sum_of_v_times_g_within_read_noise_and_transpose_matches():
    arr = make(seed=4)
    place_at_x(arr, 0.4)
    write_event_without_change(arr)  # offsets and relaxation are part of what the VMM sees
    arr.advance(100.0)
    r0, c0, nr, nc, batch = 8, 16, 32, 48, 8
    rows, cols = np.meshgrid(np.arange(r0, r0 + nr), np.arange(c0, c0 + nc), indexing="ij")
    flat = (rows * arr.cols + cols).ravel()
    rng = np.random.default_rng(9)
    for transpose in (False, True):
        g = arr.true_conductance_s(flat).reshape(nr, nc)
        g_in = g.T if transpose else g  # (inputs, outputs)
        v = rng.uniform(-0.2, 0.2, (batch, g_in.shape[0]))
        clock, energy, calls = arr.clock_sec, arr.counters.read_energy_j, arr.counters.vmm_calls_total
        currents = arr.vmm(r0, c0, nr, nc, v, transpose=transpose)
        expected = v @ g_in
        noise_sd = 0.01 * np.sqrt((v**2) @ g_in**2)
        assert currents.shape == expected.shape
        assert np.all(np.abs(currents - expected) <= 6 * noise_sd)
        assert arr.counters.vmm_calls_total == calls + 1
        assert arr.clock_sec - clock == pytest.approx(arr.params.t_command_sec + batch * arr.params.t_vmm_sec)
        e_expected = arr.params.t_read_sec * np.sum((v**2) @ g_in)
        assert arr.counters.read_energy_j - energy == pytest.approx(e_expected, rel=1e-9, abs=0)
    assert arr.vmm(r0, c0, nr, nc, v[0], transpose=True).shape == (nr,)


# ---- energy and time bookkeeping ---------------------------------------------------------
def test_energy_and_duration_of_a_single_pulse():
    arr = make(line_capacitance_f=1e-13, sigma_w_s=0.0)  # G after the pulse, no write error on top
    dev = int(np.flatnonzero(~arr.stuck)[0])
    g_before = arr.g[dev]
    clock = arr.clock_sec
    out = arr.apply_pulses([dev], [1], SET, RESET)
    v, w = SET
    device = v**2 * (g_before + arr.g[dev]) / 2 * w
    periphery = arr.params.write_periphery_energy_j + 1e-13 * v**2  # per device written + C V^2 per pulse
    # abs=0: pytest.approx's default absolute tolerance (1e-12 J) is as large as these energies
    assert out.energy_j == pytest.approx(device + periphery, rel=1e-12, abs=0)
    assert out.periphery_energy_j == pytest.approx(periphery, rel=1e-12, abs=0)
    c = arr.counters
    assert c.write_energy_j == pytest.approx(device + periphery, rel=1e-12, abs=0)
    assert (c.write_device_energy_j, c.write_periphery_energy_j) == pytest.approx((device, periphery), rel=1e-12, abs=0)
    p = arr.params
    assert out.duration_sec == pytest.approx(p.t_command_sec + w + p.t_pulse_gap_sec)
    assert arr.clock_sec == pytest.approx(clock + out.duration_sec)
    assert arr.t_w[dev] == arr.clock_sec
    assert (out.set_pulses, out.reset_pulses) == (1, 0)
    assert arr.counters.write_events_total == 1


def test_batch_duration_sums_both_phases_and_read_bookkeeping():
    arr = make()
    p = arr.params
    out = arr.apply_pulses([0, 5, 9], [3, -2, 1], SET, (-1.8, 80e-9))
    assert out.duration_sec == pytest.approx(2 * p.t_command_sec + 3 * (50e-9 + p.t_pulse_gap_sec)
                                             + 2 * (80e-9 + p.t_pulse_gap_sec))
    assert (out.set_pulses, out.reset_pulses) == (4, 2)
    cells = np.array([1, 2, COLS + 1, 5 * COLS])  # three distinct rows
    g_true = arr.true_conductance_s(cells)
    clock, energy = arr.clock_sec, arr.counters.read_energy_j
    arr.read_g(cells)
    assert arr.clock_sec - clock == pytest.approx(p.t_command_sec + 3 * p.t_read_row_sec)
    assert arr.counters.read_energy_j - energy == pytest.approx(p.read_voltage_v**2 * p.t_read_sec * g_true.sum(), rel=1e-9, abs=0)
    arr.account_conversions(10, dac=7)
    assert arr.counters.adc_energy_j == pytest.approx(10 * p.adc_energy_j, abs=0)
    assert arr.counters.dac_energy_j == pytest.approx(7 * p.dac_energy_j, abs=0)
    assert (arr.counters.adc_conversions_total, arr.counters.dac_conversions_total) == (10, 7)


# ---- reproducibility ---------------------------------------------------------------------
def run_sequence(seed: int) -> MemristorArray:
    arr = make(seed=seed, rows=32, cols=32)
    rng = np.random.default_rng(0)
    for _ in range(3):
        idx = np.sort(rng.choice(arr.n_devices, 300, replace=False))
        counts = rng.integers(1, 6, 300) * rng.choice([-1, 1], 300)
        arr.apply_pulses(idx, counts, SET, RESET)
        arr.read_g(idx)
        arr.vmm(0, 0, 8, 8, rng.uniform(-0.2, 0.2, (2, 8)))
        arr.advance(10.0)
    return arr


def test_same_seed_same_state_digest_different_seed_different():
    a, b, c = run_sequence(7), run_sequence(7), run_sequence(8)
    assert a.state_digest() == b.state_digest()
    np.testing.assert_array_equal(a.g, b.g)
    assert a.state_digest() != c.state_digest()
    a.advance(1.0)
    assert a.state_digest() != b.state_digest()


# ---- vectorised model vs the reference loop --------------------------------------------
def twin_batch(seed: int, **overrides):
    a, b = make(seed=seed, rows=64, cols=64, **overrides), make(seed=seed, rows=64, cols=64, **overrides)
    for arr in (a, b):
        place_at_x(arr, 0.5)
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 6, a.n_devices) * rng.choice([-1, 1], a.n_devices)
    return a, b, counts


def test_reference_loop_matches_exactly_without_noise_including_wear_and_stuck():
    a, b, counts = twin_batch(3, sigma_c2c=0.0, sigma_w_s=0.0, stuck_fraction=0.1, endurance_pulses=2, wear_window_loss=0.7)
    g0 = a.g.copy()
    out_a = a.apply_pulses(everything(a), counts, SET, RESET)
    out_b = apply_pulses_loop(b, everything(b), counts, SET, RESET)
    assert a.worn_out.any() and (a.g != g0).any()
    np.testing.assert_allclose(a.g, b.g, rtol=1e-6, atol=0)  # float32 noise factor: ~1e-7
    np.testing.assert_array_equal(a.stuck, b.stuck)
    np.testing.assert_array_equal(a.n_pulses, b.n_pulses)
    assert out_a.energy_j == pytest.approx(out_b.energy_j, rel=1e-6)
    assert (out_a.set_pulses, out_a.reset_pulses, out_a.duration_sec) == (
        out_b.set_pulses, out_b.reset_pulses, out_b.duration_sec)
    assert a.clock_sec == b.clock_sec
    assert a.counters.pulses_total == b.counters.pulses_total


def rel_se_of_std(x: np.ndarray) -> float:
    """Relative standard error of a sample standard deviation, from the fourth moment."""
    d = x - x.mean()
    var, m4 = np.mean(d**2), np.mean(d**4)
    return math.sqrt((m4 - var**2) / x.size) / (2 * var)


def test_reference_loop_agrees_statistically_with_noise():
    a, b, counts = twin_batch(5)
    g0 = a.g.copy()
    a.apply_pulses(everything(a), counts, SET, RESET)
    apply_pulses_loop(b, everything(b), counts, SET, RESET)
    for sign in (+1, -1):
        m = (np.sign(counts) == sign) & ~a.stuck
        da, db = (a.g - g0)[m], (b.g - g0)[m]
        se = math.sqrt(da.var() / da.size + db.var() / db.size)
        assert abs(da.mean() - db.mean()) <= N_SIGMA * se
        assert abs(da.std() / db.std() - 1) <= N_SIGMA * math.hypot(rel_se_of_std(da), rel_se_of_std(db))
    for arr in (a, b):  # the relaxation draw is fresh and standard normal in both engines
        xi_r = arr.xi_r[~arr.stuck]
        assert abs(xi_r.std() - 1) <= N_SIGMA / math.sqrt(2 * xi_r.size)


@settings(max_examples=25, deadline=None)
@given(counts=st.lists(st.integers(-40, 40).filter(bool), min_size=16, max_size=16), seed=st.integers(0, 2**16))
def test_conductance_stays_inside_the_window(counts, seed):
    arr = make(seed=seed, rows=4, cols=4, sigma_c2c=2.0, endurance_pulses=30)
    arr.apply_pulses(everything(arr), counts, (2.5, 100e-9), (-2.5, 100e-9))
    assert np.all(arr.g >= arr.params.g_min_s)
    assert np.all(arr.g <= arr.g_max)
    np.testing.assert_array_equal(arr.n_pulses, np.abs(counts))


# ---- write-verify --------------------------------------------------------------------------
def test_write_verify_converges_for_working_devices_and_not_for_stuck_ones():
    # Tolerance 1 uS = the single-shot write-noise floor (sigma_w = 1 uS, relaxation 0.4 uS at t ~ 0):
    # every round adds a fresh error, so a device at its target lands inside +-1 uS with p ~ 0.64.
    arr = make(seed=11, rows=64, cols=64, stuck_fraction=0.05)
    idx = everything(arr)
    targets = np.random.default_rng(1).uniform(10e-6, 70e-6, arr.n_devices)
    pulses_before = arr.counters.pulses_total
    res = write_verify(arr, idx, targets, 1e-6, 100, SET, RESET)
    achieved, converged, iterations, pulses, energy = res
    ok = ~arr.stuck_factory
    assert converged[ok].mean() >= 0.99
    assert not converged[~ok].any()  # targets are far from g_min and g_max
    assert np.all(np.abs(achieved[converged] - targets[converged]) <= 1e-6)
    assert np.all(iterations[~ok] == 100) and iterations.max() <= 100
    assert pulses == arr.counters.pulses_total - pulses_before > 0
    assert energy > 0
    truth = arr.true_conductance_s(idx[converged & ok])
    assert np.median(np.abs(truth - targets[converged & ok])) < 1e-6


# ---- partial (width-modulated) pulses ---------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.04, 0.3, 0.75])
def test_a_partial_pulse_steps_by_its_width(ratio):
    """bp's partial pulse: mean step = width ratio x a full pulse's (the width law), over many
    devices and several seeds, c2c noise on; whole pulses before it in the same write event."""
    for seed in (1, 2, 3):
        full, part = make(seed, **QUIET), make(seed, **QUIET)
        for a in (full, part):
            place_at_x(a, 0.3)
        ok = ~full.stuck
        expected = (full.alpha_set * 0.7)[ok]  # mean step of one full pulse at x = 0.3 (gamma = 1)
        before = part.g.copy()
        n = part.n_devices
        part.apply_pulses(everything(part), np.ones(n, np.int64), SET, RESET, last_width_sec=np.full(n, ratio * 50e-9))
        assert_mean((part.g - before)[ok] / expected, ratio)
        # two whole pulses + one partial, all in one write event
        events = part.counters.write_events_total
        before = part.g.copy()
        out = part.apply_pulses(everything(part), np.full(n, 3), SET, RESET, last_width_sec=np.full(n, ratio * 50e-9))
        assert part.counters.write_events_total - events == n and out.set_pulses == 3 * n
        x_before = (before - 1e-6) / (part.g_max - 1e-6)
        k = part.alpha_set / (part.g_max - 1e-6)  # soft bounds: each pulse shrinks the next by (1 - k)
        expected_3 = part.alpha_set * (1 - x_before) * (1 + (1 - k) + ratio * (1 - k) ** 2)
        assert_mean((part.g - before)[ok] / expected_3[ok], 1.0)


def test_partial_pulse_energy_and_duration_use_its_width():
    arr = make(line_capacitance_f=0.0)
    dev = int(np.flatnonzero(~arr.stuck)[0])
    g_before = arr.g[dev]
    out = arr.apply_pulses([dev], [1], SET, RESET, last_width_sec=[12e-9])
    v = SET[0]
    assert out.energy_j == pytest.approx(v**2 * (g_before + arr.g[dev]) / 2 * 12e-9, rel=1e-12)
    p = arr.params
    assert out.duration_sec == pytest.approx(p.t_command_sec + 12e-9 + p.t_pulse_gap_sec)
    # a batch's last slot lasts as long as the longest last pulse of the devices with the most pulses
    out = arr.apply_pulses([0, 5, 9], [3, 3, 1], SET, RESET, last_width_sec=[20e-9, 30e-9, 40e-9])
    assert out.duration_sec == pytest.approx(p.t_command_sec + 2 * (50e-9 + p.t_pulse_gap_sec) + 30e-9 + p.t_pulse_gap_sec)
    assert out.duration_sec == pytest.approx(arr.write_batch_duration_sec(np.array([3, 3, 1]), 50e-9, 50e-9,
                                                                          np.array([20e-9, 30e-9, 40e-9])))
    with pytest.raises(ValueError, match="longer"):
        arr.apply_pulses([0], [1], SET, RESET, last_width_sec=[60e-9])
