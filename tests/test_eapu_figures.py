"""The headline comparison, asserted on means over seeds that were not used to choose the defaults.

The training defaults (lr, w_max, ΔGth factor) were chosen on tuning seeds 100-104
(examples/sweeps/choose_defaults.toml, docs/DESIGN.md "Training defaults"); these tests use
evaluation seeds 0-4 (0-9 on the noisy device, as the issue states its band), each on its own
emulated board (``emu?seed=S``, ``emu?preset=NAME&seed=S``), exactly as ``hil demo`` runs them:
the default device, ``noisy2x`` (write error and cycle-to-cycle spread doubled) and ``paper`` (the
write error at the published share of a weight).  Bands are on the mean over the seeds, as the issue states them
for the published comparison; the figures are printed so a CI log shows what was seen.
"""

from __future__ import annotations

import pytest

from hil.compare import compare
from hil.demo import DemoPlan, run_demo

EVAL_SEEDS = (0, 1, 2, 3, 4)
# the noisy device: judged on the 10 evaluation seeds, not 5 (its gap over seeds 0-4 is the smaller one)
NOISY_SEEDS = tuple(range(10))
# a hang guard, not a speed bound: each fixture calibrates and trains 5 boards (~2 min of CPU each)
pytestmark = pytest.mark.timeout(3600)


def _demo(tmp_path_factory, address: str, seeds: tuple[int, ...] = EVAL_SEEDS):
    out = tmp_path_factory.mktemp("demo")
    dirs = run_demo(DemoPlan(address, out, seeds, epochs=10), progress=False, echo=lambda _: None)
    groups, ratios = compare(dirs)
    by_method = {g.method: g for g in groups}
    for g in groups:
        f = g.figures
        wf = f.get("write_fraction_per_weight")
        print(f"\n{address} {g.method}: accuracy {f['metric'].text('{:.4f}')}"
              + ("" if g.gap_to_float is None else f", gap to float {g.gap_to_float.text('{:+.4f}')}")
              + ("" if wf is None else f", writes/weight/step {wf.text('{:.4%}')}")
              + ("" if g.eapu_lead is None else f", eapu minus {g.method} {g.eapu_lead.text('{:+.4f}')}"))
    for r in ratios:
        print(r.text())
    return by_method, ratios


@pytest.fixture(scope="module")
def default_device(tmp_path_factory):
    return _demo(tmp_path_factory, "emu")


@pytest.fixture(scope="module")
def noisy_device(tmp_path_factory):
    return _demo(tmp_path_factory, "emu?preset=noisy2x", NOISY_SEEDS)


@pytest.fixture(scope="module")
def paper_device(tmp_path_factory):
    return _demo(tmp_path_factory, "emu?preset=paper")


@pytest.mark.slow
def test_eapu_keeps_float_accuracy_with_sparse_writes(default_device):
    groups, _ = default_device
    eapu = groups["eapu"]
    assert eapu.gap_to_float.mean >= -0.015  # within 1.5 points of float, mean over the seeds
    assert eapu.figures["write_fraction_per_weight"].mean <= 0.01


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured with the defaults chosen on the tuning seeds (w_max 0.75, k 9): on "
                                       "the default device eapu minus bp is +0.06 +- 1.43 points over seeds 0-4 "
                                       "(-0.31 +- 0.95 over 0-9, docs/RESULTS.md), not 2 points: at this weight scale "
                                       "a 10-epoch digits run tolerates every-step noisy writes")
def test_the_noisy_bp_baseline_falls_below_eapu(default_device):
    groups, _ = default_device
    assert groups["bp"].eapu_lead.mean >= 0.02  # eapu minus bp, paired by seed


@pytest.mark.slow
def test_bp_writes_every_step_and_costs_more_energy_than_eapu(default_device):
    groups, ratios = default_device
    assert groups["bp"].figures["write_fraction_per_weight"].mean >= 50 * groups["eapu"].figures[
        "write_fraction_per_weight"].mean
    by_name = {(r.quantity, r.numerator): r for r in ratios}
    assert {("total training energy", "bp"), ("write energy", "bp")} <= set(by_name)
    assert by_name[("write energy", "bp")].ratio > 1 and by_name[("total training energy", "bp")].ratio > 1


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured: on noisy2x eapu minus bp is -0.25 +- 1.25 points over seeds 0-9 "
                                       "(docs/RESULTS.md), not 5 points")
def test_on_a_twice_as_noisy_device_bp_collapses_and_eapu_does_not(noisy_device):
    groups, _ = noisy_device
    assert groups["bp"].eapu_lead.mean >= 0.05


@pytest.mark.slow
def test_on_a_twice_as_noisy_device_eapu_stays_within_3_points_of_float(noisy_device):
    groups, _ = noisy_device
    assert groups["eapu"].gap_to_float.mean >= -0.03


@pytest.mark.slow
def test_in_the_published_noise_regime_bp_falls_below_eapu(paper_device):
    """The `paper` preset puts the write error at the published share of a weight (0.025 weight units):
    there every-step noisy writes cost bp accuracy that eapu keeps.  Band: eapu at least 1.5 points
    above bp, mean over seeds 0-4 (docs/RESULTS.md, sweep `presets_paper`, has the figure over 0-9)."""
    groups, _ = paper_device
    assert groups["bp"].eapu_lead.mean >= 0.015
