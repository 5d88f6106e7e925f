"""One effective limit everywhere: the tighter of the user's and the hardware's, on every board.

A loose user limits file cannot loosen anything: what reaches an instrument (the SCPI
emulators' command logs) or the wire (the FPGA link's byte counters) stays within the
hardware's limits.  Limit comparisons forgive float rounding at the boundary; forming,
I-V sweeps and calibration check everything before their first request; pulse batches
are split exactly within the per-batch and per-device limits; a limits file that
conflicts with the hardware is a one-line error.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calibration import characterize as ch
from calibration.common import pulse_devices
from drivers import BoardError, LimitConflict, LimitViolation, PulseBatch, PulseProfile, Region, SafetyLimits
from drivers.address import open_board
from drivers.limits import (
    DEVICE_SAFE_LIMITS,
    check_form_voltage,
    check_profile,
    effective_limits,
    exceeds,
    falls_below,
    load_limits,
)
from firmware_stub.firmware import HardwareLimits
from firmware_stub.scpi.serve_bench import start_bench

ROOT = Path(__file__).resolve().parents[1]
HIL = [sys.executable, "-m", "hil.cli"]

#: A user limits file as loose as the instruments' ratings (what the tester used).
LOOSE = SafetyLimits(max_set_v=9.0, max_reset_v=9.0, max_read_v=5.0, max_form_v=9.0, compliance_a=1.0,
                     min_pulse_width_sec=1e-9, max_pulse_width_sec=1.0, max_pulses_per_batch=10**9,
                     max_pulses_per_device=10**6)
LOOSE_TOML = "\n".join(f"{k} = {v!r}" for k, v in LOOSE.model_dump().items()) + "\n"


def run_hil(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*HIL, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def assert_one_line_error(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == out.stderr.strip().splitlines()[-1], out.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


# ---- the limits themselves ------------------------------------------------------------------------------
def test_device_safe_defaults_are_the_emulated_boards_hardware_limits():
    assert DEVICE_SAFE_LIMITS.model_dump() == asdict(HardwareLimits())


def test_comparisons_forgive_rounding_and_clamp_onto_the_limit():
    v = float(np.arange(2.0, 3.55, 0.1)[-1])  # 3.5000000000000013: the old forming staircase's last step
    assert v > 3.5 and not exceeds(v, 3.5) and exceeds(3.5 * (1 + 1e-8), 3.5)
    assert not falls_below(0.1 * 3 / 3, 0.1) and falls_below(0.0999, 0.1)
    assert exceeds(float("nan"), 1.0)
    lim = SafetyLimits(max_form_v=3.5, max_set_v=0.3)
    assert check_form_voltage(v, lim) == 3.5  # sent exactly at the limit, not one ulp beyond
    p = check_profile(PulseProfile(amplitude_v=0.1 * 3, width_sec=50e-9), +1, lim)  # 0.30000000000000004
    assert p.amplitude_v == 0.3
    with pytest.raises(LimitViolation, match="outside"):
        check_form_voltage(3.5001, lim)


def test_user_limits_only_tighten_and_looser_values_are_reported(caplog):
    user = SafetyLimits(max_set_v=9.0, max_read_v=0.2)
    with caplog.at_level(logging.WARNING, logger="drivers.limits"):
        eff = effective_limits(user, DEVICE_SAFE_LIMITS)
    assert eff.limits.max_set_v == 3.0 and eff.limits.max_read_v == 0.2
    assert eff.sources["max_set_v"] == "hardware" and eff.sources["max_read_v"] == "user"
    assert eff.sources["max_reset_v"] == "default"  # the user side's default (2.5) is the tighter
    assert eff.refused == {"max_set_v": (9.0, 3.0)}
    assert len(caplog.records) == 1 and "max_set_v = 9" in caplog.records[0].getMessage()
    for name, value in eff.limits.model_dump().items():  # field by field the stricter
        hw = getattr(DEVICE_SAFE_LIMITS, name)
        assert value == (max(getattr(user, name), hw) if name == "min_pulse_width_sec" else min(getattr(user, name), hw))


def test_disjoint_pulse_width_windows_are_a_conflict():
    user = SafetyLimits(min_pulse_width_sec=2e-3, max_pulse_width_sec=1.0)
    with pytest.raises(LimitConflict) as info:
        effective_limits(user, DEVICE_SAFE_LIMITS)
    msg = str(info.value)
    assert "[0.002, 1] s" in msg and "[1e-10, 0.001] s" in msg and "\n" not in msg


# ---- VISA: nothing beyond the effective limits reaches an instrument ---------------------------------------
_NUM = r"([-+0-9.eE]+)"


def instrument_settings(running) -> dict[str, list[float]]:
    """Every level, width, burst count and current limit the instruments were sent (their command logs)."""
    out: dict[str, list[float]] = {"level_v": [], "width_sec": [], "burst": [], "smu_v": [], "ilim_a": []}
    pats = {"level_v": rf"SOUR\d:VOLT:(?:LIM:)?HIGH {_NUM}$", "width_sec": rf"SOUR\d:FUNC:PULS:WIDT {_NUM}$",
            "burst": rf"SOUR\d:BURS:NCYC {_NUM}$", "smu_v": rf":SOUR:VOLT {_NUM}$", "ilim_a": rf":SOUR:VOLT:ILIM {_NUM}$"}
    for inst in running.instruments.values():
        for line in inst.log:
            for key, pat in pats.items():
                m = re.search(pat, line)
                if m:
                    out[key].append(float(m.group(1)))
    return out


def assert_within(settings_sent: dict[str, list[float]], lim: SafetyLimits) -> None:
    assert max(settings_sent["level_v"]) <= max(lim.max_set_v, lim.max_reset_v)
    assert all(lim.min_pulse_width_sec <= w <= lim.max_pulse_width_sec for w in settings_sent["width_sec"])
    assert max(settings_sent["burst"]) <= lim.max_pulses_per_device
    assert max(np.abs(settings_sent["smu_v"])) <= lim.max_read_v
    assert max(settings_sent["ilim_a"]) <= lim.compliance_a


@pytest.fixture
def bench(tmp_path):
    running = start_bench(3, 4, seed=7)
    path = running.write_bench_file(tmp_path / "bench.toml")
    yield running, path
    running.stop()


def test_bench_file_states_device_safe_hardware_limits(bench, tmp_path):
    running, path = bench
    text = path.read_text()
    assert "[limits]" in text and "max_set_v = 3.0" in text  # serve-bench writes them out
    without = tmp_path / "no-limits.toml"
    without.write_text(text[: text.index("[limits]")])
    for p in (path, without):  # absent section: the same device-safe defaults, not the instruments' ratings
        with open_board(f"visa:{p}", LOOSE) as b:
            hw = b.info.hardware_limits
            assert (hw.max_set_v, hw.max_reset_v, hw.max_read_v, hw.compliance_a) == (3.0, 3.0, 0.5, 1e-3)
            assert hw.max_pulse_width_sec == 1e-3 and hw.max_pulses_per_device == 255
            assert hw.min_pulse_width_sec == 20e-9  # the generator's shortest clean pulse is the stricter
            assert b.limits == hw  # the loose user file changed nothing
            assert b.effective_limits.sources["max_set_v"] == "hardware"


def test_loose_user_limits_never_reach_the_instruments(bench):
    running, path = bench
    with open_board(f"visa:{path}", LOOSE) as b:
        lim = b.limits
        before = [len(i.log) for i in running.instruments.values()]
        # what the tester applied: 9 V x 1 ms x 1000 pulses, and a 3.5 V SET profile
        with pytest.raises(LimitViolation, match="SET amplitude"):
            b.set_profiles(PulseProfile(amplitude_v=9.0, width_sec=1e-3), b.profiles[1])
        with pytest.raises(LimitViolation, match="SET amplitude"):
            b.set_profiles(PulseProfile(amplitude_v=3.5, width_sec=50e-9), b.profiles[1])
        with pytest.raises(LimitViolation, match="width"):
            b.set_profiles(PulseProfile(amplitude_v=1.0, width_sec=2e-3), b.profiles[1])
        with pytest.raises(LimitViolation, match="max_pulses_per_device"):
            b.pulse(PulseBatch(np.array([0]), np.array([0]), np.array([1000])))
        assert [len(i.log) for i in running.instruments.values()] == before
        # exactly at the limits is allowed, and what is sent stays within them
        b.set_profiles(PulseProfile(amplitude_v=3.0, width_sec=1e-3), PulseProfile(amplitude_v=-3.0, width_sec=1e-3))
        b.pulse(PulseBatch(np.array([0, 1]), np.array([0, 1]), np.array([255, -255])))
        b.read()
        b.program(np.array([0, 2]), np.array([3, 3]), np.array([20e-6, 40e-6]), tolerance_s=2e-6, max_iter=10)
    sent = instrument_settings(running)
    assert 3.0 in sent["level_v"] and 255 in sent["burst"]
    assert_within(sent, lim)


def test_calibrate_with_a_loose_limits_file_refuses_a_3_5_v_profile(tmp_path):
    running = start_bench(5, 5, seed=3)  # room for calibration's smallest samples
    path = running.write_bench_file(tmp_path / "bench.toml")
    loose = tmp_path / "loose.toml"
    loose.write_text(LOOSE_TOML)
    try:
        out = run_hil("--limits", str(loose), "calibrate", "--board", f"visa:{path}", "--out", str(tmp_path / "cal"),
                      "--set-amplitude", "3.5", "--no-progress", "--no-plots")
    finally:
        running.stop()
    assert_one_line_error(out, "SET amplitude +3.500 V", "3.000")
    assert "max_set_v = 9" in out.stderr  # the looser user value was reported
    sent = instrument_settings(running)
    assert sent["burst"] == [1] and not sent["width_sec"]  # only the pulser's configuration: no pulse was set up
    assert_within(sent, DEVICE_SAFE_LIMITS.model_copy(update={"min_pulse_width_sec": 20e-9}))


def test_bench_file_limits_beyond_the_instruments_are_cut_to_their_ratings(bench, tmp_path):
    running, _ = bench
    p = running.write_bench_file(tmp_path / "hot.toml", limits={"max_set_v": 12.0, "max_pulses_per_device": 10**9})
    with open_board(f"visa:{p}", LOOSE) as b:
        assert b.info.hardware_limits.max_set_v == 10.0  # the generator's open-circuit rating
        assert b.info.hardware_limits.max_pulses_per_device == 10**8


# ---- emu and serial: a refused request sends no byte ------------------------------------------------------
def _refused_requests_send_nothing(b) -> None:
    assert b.limits.max_set_v == 3.0 and b.limits.max_pulse_width_sec == 1e-3  # hardware, not the loose file
    n = b.wire_bytes
    with pytest.raises(LimitViolation):
        b.set_profiles(PulseProfile(amplitude_v=3.5, width_sec=50e-9), b.profiles[1])
    with pytest.raises(LimitViolation):
        b.set_profiles(PulseProfile(amplitude_v=9.0, width_sec=1e-3), b.profiles[1])
    with pytest.raises(LimitViolation):
        b.pulse(PulseBatch(np.array([0]), np.array([0]), np.array([1000])))
    with pytest.raises(LimitViolation):
        b.form(np.array([0]), np.array([0]), 4.5, 1e-6, 1e-4)
    with pytest.raises(LimitViolation):
        b.iv_sweep(np.array([0]), np.array([0]), np.linspace(0, 5, 11), 1e-3, 1e-4)
    with pytest.raises(LimitViolation):
        b.vmm(Region(0, 0, 2, 2), np.full((1, 2), 0.6))  # beyond max_read_v = 0.5 (the loose file asked 5)
    assert b.wire_bytes == n
    b.set_profiles(PulseProfile(amplitude_v=3.0, width_sec=1e-3), b.profiles[1])  # at the limit: accepted
    b.pulse(PulseBatch(np.array([0]), np.array([0]), np.array([255])))
    assert b.wire_bytes > n


def test_loose_user_limits_on_emu_send_nothing_beyond_the_hardware():
    with open_board("emu?rows=4&cols=4", LOOSE) as b:
        _refused_requests_send_nothing(b)


def test_loose_user_limits_on_serial_send_nothing_beyond_the_hardware(pty_emulator):
    with open_board(f"serial:{pty_emulator.path}", LOOSE) as b:
        _refused_requests_send_nothing(b)


# ---- forming and I-V sweeps: checked before the first request -----------------------------------------------
@pytest.mark.parametrize("kind", ["emu", "serial"])
def test_forming_beyond_the_limit_sends_nothing(kind, pty_emulator):
    address = "emu?rows=4&cols=4" if kind == "emu" else f"serial:{pty_emulator.path}"
    with open_board(address) as b:
        n = b.wire_bytes
        with pytest.raises(LimitViolation, match="v-stop"):
            ch.run("forming", b, ch.FormingParams(v_stop_v=5.0, region=(0, 0, 2, 2)))
        with pytest.raises(LimitViolation, match="compliance"):
            ch.run("forming", b, ch.FormingParams(compliance_a=5e-3, region=(0, 0, 2, 2)))
        with pytest.raises(LimitViolation, match="width"):
            ch.run("forming", b, ch.FormingParams(width_sec=5e-3, region=(0, 0, 2, 2)))
        with pytest.raises(LimitViolation, match="sweep"):
            ch.run("iv-sweep", b, ch.IvSweepParams(v_set_max_v=4.5, region=(0, 0, 1, 1)))
        assert b.wire_bytes == n  # not one frame: no read, no clock query, no forming pulse


def test_forming_exactly_at_the_limit_is_accepted():
    with open_board("emu?rows=4&cols=4&seed=1", SafetyLimits(max_form_v=3.3)) as b:
        params = ch.FormingParams(v_start_v=2.0, v_stop_v=3.3, v_step_v=0.1)
        assert params.steps_v()[-1] == 3.3 and params.steps_v().size == 14
        m = ch.run("forming", b, params)
        v = m.raw["v_form"]
        assert np.all(v[np.isfinite(v)] <= 3.3)


def test_forming_the_bench_cannot_hold_sends_nothing(bench):
    """The bench's SMU holds a level for one reading (0.2-200 ms): the default 1 µs forming pulse is refused
    before the first instrument command."""
    running, path = bench
    with open_board(f"visa:{path}") as b:
        before = [len(i.log) for i in running.instruments.values()]
        with pytest.raises(BoardError, match="forming"):
            ch.run("forming", b, ch.FormingParams())
        assert [len(i.log) for i in running.instruments.values()] == before


def test_forming_cli_at_and_beyond_the_limit(tmp_path):
    out = run_hil("characterize", "forming", "--board", "emu?rows=4&cols=4", "--out", str(tmp_path / "a"),
                  "--v-stop", "5")
    assert_one_line_error(out, "5.000 V", "max_form_v = 3.500 V", "--v-stop")
    assert not (tmp_path / "a").exists()
    out = run_hil("characterize", "forming", "--board", "emu?rows=4&cols=4", "--out", str(tmp_path / "b"),
                  "--v-stop", "3.5")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "b" / "forming.h5").exists()


# ---- batches split exactly within the limits -------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(per_device=st.integers(1, 40), per_batch=st.integers(1, 120),
       counts=st.lists(st.integers(-150, 150), min_size=1, max_size=16), split=st.booleans())
def test_pulse_devices_splits_exactly_within_the_limits(per_device, per_batch, counts, split):
    counts = np.array(counts, dtype=np.int64)
    flat = np.arange(counts.size)
    lim = SafetyLimits(max_pulses_per_device=per_device, max_pulses_per_batch=per_batch)
    with open_board("emu?rows=4&cols=4", lim) as b:
        batches = []
        real_pulse = b.pulse

        def recording_pulse(batch, tag=0):
            batches.append(batch)
            return real_pulse(batch, tag)

        b.pulse = recording_pulse
        fits = np.abs(counts).max() <= min(per_device, per_batch)
        if not split and not fits:
            with pytest.raises(LimitViolation):
                pulse_devices(b, flat, counts, split=False)
            assert batches == [] and b.status().pulses_total == 0
            return
        n = pulse_devices(b, flat, counts, split=split)
        assert n == len(batches)
        got = np.zeros(counts.size, dtype=np.int64)
        for batch in batches:
            assert np.abs(batch.counts).max() <= per_device and np.abs(batch.counts).sum() <= per_batch
            assert np.unique(batch.cols + 4 * batch.rows).size == len(batch)
            np.add.at(got, batch.rows * 4 + batch.cols, batch.counts)
        assert np.array_equal(got, counts)  # every device got exactly what was asked
        if not split:  # one write event per device
            seen = np.concatenate([b_.rows * 4 + b_.cols for b_ in batches]) if batches else np.zeros(0)
            assert seen.size == np.count_nonzero(counts)
        assert b.status().pulses_total == int(np.abs(counts).sum())


def test_write_verify_rounds_respect_the_batch_limit_on_the_bench(bench):
    running, path = bench
    with open_board(f"visa:{path}", SafetyLimits(max_pulses_per_batch=5, max_pulses_per_device=3)) as b:
        real_pulse = b.pulse
        sizes = []

        def recording_pulse(batch, tag=0):
            sizes.append((int(np.abs(batch.counts).sum()), int(np.abs(batch.counts).max())))
            return real_pulse(batch, tag)

        b.pulse = recording_pulse
        rows, cols = np.divmod(np.arange(12), 4)
        rep = b.program(rows, cols, np.full(12, 40e-6), tolerance_s=2e-6, max_iter=4)
    assert sizes and all(total <= 5 and worst <= 3 for total, worst in sizes)
    assert rep.pulses == sum(total for total, _ in sizes)


def test_write_verify_rounds_respect_the_batch_limit_on_the_fpga():
    from protocols import messages as m
    from protocols.messages import Op

    with open_board("emu?rows=4&cols=4&seed=2", SafetyLimits(max_pulses_per_batch=5)) as b:
        real = b._transact
        rounds = []

        def recording(opcode, payload=b"", extra_sec=0.0):
            if opcode == Op.PROGRAM:
                flat, _, _, _, per_round = m.decode_program_request(payload)
                rounds.append(flat.size * per_round)
            return real(opcode, payload, extra_sec)

        b._transact = recording
        rows, cols = np.divmod(np.arange(16), 4)
        rep = b.program(rows, cols, np.full(16, 40e-6), tolerance_s=2e-6, max_iter=20)
    assert len(rounds) == 4 and max(rounds) <= 5  # 16 devices in groups of 5, 5, 5, 1, one pulse per round
    assert rep.pulses > 0 and rep.achieved_s.shape == (16,) and np.all(rep.iterations >= 1)


def test_calibrate_refuses_single_event_counts_beyond_the_limits_before_anything(tmp_path):
    from calibration.run import CalibrationParams, calibrate

    with open_board("emu?rows=8&cols=8", SafetyLimits(max_pulses_per_batch=4)) as b:
        n = b.wire_bytes
        with pytest.raises(LimitViolation, match="pulses_per_step"):
            calibrate(b, tmp_path / "cal", CalibrationParams(sample=16), progress=False)
        assert b.wire_bytes == n and not (tmp_path / "cal").exists()


# ---- a limits file that conflicts with the hardware ----------------------------------------------------------
@pytest.fixture
def conflicting(tmp_path):
    p = tmp_path / "narrow.toml"
    p.write_text("min_pulse_width_sec = 2e-3\nmax_pulse_width_sec = 1.0\n")
    return p


@pytest.mark.parametrize("command", [
    ["info", "--board", "emu?rows=4&cols=4"],
    ["calibrate", "--board", "emu?rows=4&cols=4", "--out", "{tmp}/cal", "--no-progress"],
    ["characterize", "forming", "--board", "emu?rows=4&cols=4", "--out", "{tmp}/f"],
    ["train", "--board", "emu?rows=64&cols=64", "--task", "digits-small", "--epochs", "1", "--out", "{tmp}/run",
     "--quiet"],
])
def test_conflicting_limits_file_is_a_one_line_error(conflicting, tmp_path, command):
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    out = run_hil("--limits", str(conflicting), *args)
    assert_one_line_error(out, "[0.002, 1] s", "[1e-10, 0.001] s", "min_pulse_width_sec")


def test_conflicting_limits_on_a_bench(bench, conflicting):
    _, path = bench
    out = run_hil("--limits", str(conflicting), "info", "--board", f"visa:{path}")
    assert_one_line_error(out, "[0.002, 1] s", "[2e-08, 0.001] s")


def test_bench_file_limits_that_miss_the_generator_are_a_one_line_error(bench, tmp_path):
    running, _ = bench
    p = running.write_bench_file(tmp_path / "tiny.toml", limits={"max_pulse_width_sec": 1.5e-8})
    out = run_hil("info", "--board", f"visa:{p}")
    assert_one_line_error(out, "bench file", "[limits]", "[2e-08, 1] s")


def test_a_limits_file_invalid_in_itself_is_one_line(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("min_pulse_width_sec = 2e-3\n")  # above the default maximum of 1 ms
    with pytest.raises(ValueError) as info:
        load_limits(p)
    assert "\n" not in str(info.value) and "min_pulse_width_sec" in str(info.value)
    out = run_hil("--limits", str(p), "info", "--board", "emu?rows=4&cols=4")
    assert_one_line_error(out, "min_pulse_width_sec")


def test_hil_info_shows_which_side_set_each_limit(tmp_path):
    import json

    loose = tmp_path / "loose.toml"
    loose.write_text("max_set_v = 9.0\nmax_read_v = 0.2\n")
    out = run_hil("--limits", str(loose), "info", "--board", "emu?rows=4&cols=4", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["effective_limits"]["max_set_v"] == 3.0
    assert data["limit_sources"]["max_set_v"] == "hardware" and data["limit_sources"]["max_read_v"] == "user"
    assert data["limits_refused"] == {"max_set_v": {"asked": 9.0, "used": 3.0}}
    assert "max_set_v = 9" in out.stderr and "WARNING" in out.stderr
    text = run_hil("--limits", str(loose), "info", "--board", "emu?rows=4&cols=4").stdout
    assert re.search(r"max_set_v\s+3\s+hardware\s+\(--limits asked 9", text)
    assert re.search(r"max_read_v\s+0.2\s+user", text)
