"""The typed pulse plan of a training step: its checkpoint form is the one earlier versions wrote, and a
subset keeps every per-device array aligned."""

from __future__ import annotations

import numpy as np

from hil.training.plan import StepPlan


def _plan(with_read: bool) -> StepPlan:
    flat = np.array([3, 7, 12, 40], np.int64)
    plan = StepPlan(flat, np.array([2, -1, 5, -3], np.int64), np.array([1e-7, 2e-7, 5e-8, 2e-7]),
                    (1234 << 32) | 8, {"kind": "step", "step": 7, "loss": 0.5})
    return plan.with_read(np.array([1e-5, 2e-5, 3e-5, 4e-5])) if with_read else plan


def test_checkpoint_names_are_the_run_folder_format():
    assert set(_plan(False).arrays()) == {"pending.flat", "pending.counts", "pending.last_width_sec"}
    assert set(_plan(True).arrays()) == {"pending.flat", "pending.counts", "pending.last_width_sec", "pending.g_before"}
    assert _plan(True).meta() == {"tag": (1234 << 32) | 8, "record": {"kind": "step", "step": 7, "loss": 0.5}}


def test_round_trip_through_a_checkpoint():
    for with_read in (False, True):
        plan = _plan(with_read)
        back = StepPlan.from_checkpoint(plan.meta(), plan.arrays())
        assert back.tag == plan.tag and back.record == plan.record
        for name in ("flat", "counts", "last_width_sec", "g_before"):
            a, b = getattr(plan, name), getattr(back, name)
            assert (a is None and b is None) or np.array_equal(a, b), name


def test_a_checkpoint_without_widths_resumes_with_full_pulses():
    plan = _plan(False)
    arrays = {k: v for k, v in plan.arrays().items() if k != "pending.last_width_sec"}
    back = StepPlan.from_checkpoint(plan.meta(), arrays)
    assert back.last_width_sec is None and back.batch(16).last_pulse_width_sec is None


def test_subset_and_batch_keep_devices_aligned():
    plan = _plan(True)
    part = plan.subset(np.array([1, 3]))
    assert part.flat.tolist() == [7, 40] and part.counts.tolist() == [-1, -3]
    assert part.last_width_sec.tolist() == [2e-7, 2e-7] and part.g_before.tolist() == [2e-5, 4e-5]
    assert part.tag == plan.tag and not part.empty and plan.subset(np.zeros(0, np.int64)).empty
    batch = part.batch(16)
    assert batch.rows.tolist() == [0, 2] and batch.cols.tolist() == [7, 8] and batch.counts.tolist() == [-1, -3]
