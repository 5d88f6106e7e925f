"""The VISA bench Board on the emulated bench: pyvisa-py, real TCP, the real drivers, one shared array.

Reads match the array's truth, pulses move conductances the right way, write-verify
converges, the virtual clock works; requests beyond the limits never reach an
instrument (the emulators' command logs); failures mid-operation are typed, leave
the outputs off and the relays open, and keep what was measured.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from drivers import BoardError, InstrumentError, LimitViolation, LinkError, PulseBatch, PulseProfile, Region
from drivers.address import open_board
from drivers.bench_file import BenchFileError, load_bench_file, parse_bench_file
from drivers.limits import SafetyLimits
from firmware_stub.scpi.serve_bench import start_bench
from tests.waiting import HANG_GUARD_SEC

pytestmark = pytest.mark.timing  # real TCP to instrument servers in threads, instrument timeouts

ROWS, COLS = 4, 5


@pytest.fixture
def served(tmp_path):
    running = start_bench(ROWS, COLS, seed=5)
    path = running.write_bench_file(tmp_path / "bench.toml", timeout_sec=HANG_GUARD_SEC)
    yield running, path
    running.stop()


@pytest.fixture
def board(served):
    running, path = served
    with open_board(f"visa:{path}") as b:
        yield b


def log_lengths(running) -> tuple[int, ...]:
    return tuple(len(i.log) for i in running.instruments.values())


def assert_idle(running) -> None:
    """Outputs off and every crosspoint open, as the emulators see it."""
    with running.bench.lock:
        assert running.smu.output is False
        assert not any(ch.output for ch in running.generator.ch.values())
        assert running.bench.closed == set()


# ---- identity, reads, pulses, program, clock ------------------------------------------------------
def test_info_and_capabilities(served, board):
    running, _ = served
    info = board.info
    assert info.kind == "visa" and (info.rows, info.cols) == (ROWS, COLS)
    assert "MODEL 2450" in info.name and "33522B" in info.name and "Model 707B" in info.name
    assert info.serial_number == "04500005/MY50005/07070005"
    caps = info.capabilities
    assert not caps.vmm and caps.write_verify and caps.virtual_clock and caps.true_parameters
    assert info.emulated and info.read_voltage_v == pytest.approx(0.2)
    assert info.g_full_scale_s == pytest.approx(1.05e-4 / 0.2)
    assert board.limits.min_pulse_width_sec >= 20e-9  # the generator's minimum
    with pytest.raises(BoardError, match="VMM"):
        board.vmm(Region(0, 0, 2, 2), np.zeros((1, 2)))
    params = board.true_parameters()
    assert params["rows"] == ROWS and params["seed"] == 5 and params["emulator_only"]


def test_the_bench_reports_the_address_it_was_opened_with(served, board):
    _, path = served
    assert board.address == f"visa:{path}"


def test_reads_match_the_array_truth(served, board):
    running, _ = served
    g = board.read()
    truth = running.array.true_conductance_s(np.arange(ROWS * COLS)).reshape(ROWS, COLS)
    # 1 % read noise per reading; nothing else between the two
    assert np.all(np.abs(g - truth) <= 0.05 * truth + 2 * board.info.g_lsb_s)
    cells = board.read_cells(np.array([3, 0, 3]), np.array([4, 1, 4]))
    assert cells[0] == cells[2]
    np.testing.assert_allclose(cells, truth[[3, 0, 3], [4, 1, 4]], rtol=0.05)
    sub = board.read(Region(1, 2, 2, 3))
    assert sub.shape == (2, 3)
    np.testing.assert_allclose(sub, truth[1:3, 2:5], rtol=0.05)
    assert board.status().cells_read_total == ROWS * COLS + 2 + 6
    assert running.bench.counters.hot_switches == 0  # relays never switched under voltage
    assert_idle(running)


def test_pulses_move_conductance_in_the_right_direction(served, board):
    running, _ = served
    before = board.read()
    rep = board.pulse(PulseBatch.from_dense(np.full((ROWS, COLS), 15)))
    assert rep.devices == ROWS * COLS and rep.set_pulses == 15 * ROWS * COLS and rep.reset_pulses == 0
    assert rep.energy_j > 0 and rep.duration_sec > 0
    after_set = board.read()
    assert np.median(after_set - before) > 5e-6
    rep = board.pulse(PulseBatch(np.array([0, 1, 2]), np.array([0, 1, 2]), np.array([-20, -20, 20])))
    assert (rep.devices, rep.set_pulses, rep.reset_pulses) == (3, 20, 40)
    after = board.read()
    assert after[0, 0] < after_set[0, 0] and after[1, 1] < after_set[1, 1] and after[2, 2] > after_set[2, 2]
    s = board.status()
    assert s.pulses_total == 15 * ROWS * COLS + 60 and s.max_pulses_per_device == 35
    assert running.array.counters.pulses_total == s.pulses_total  # the emulator counted the same pulses
    assert running.bench.counters.hot_switches == 0
    assert_idle(running)


def test_program_converges(served, board):
    running, _ = served
    rows, cols = np.divmod(np.arange(8), COLS)
    targets = np.linspace(15e-6, 60e-6, 8)
    rep = board.program(rows, cols, targets, tolerance_s=2e-6, max_iter=40)
    assert rep.converged_fraction >= 0.85
    ok = rep.converged
    assert np.all(np.abs(rep.achieved_s[ok] - targets[ok]) <= 2e-6)
    truth = running.array.true_conductance_s(rows * COLS + cols)
    assert np.all(np.abs(truth[ok] - targets[ok]) <= 2e-6 + 0.05 * targets[ok])  # within read noise
    assert rep.pulses > 0 and np.all(rep.iterations >= 0)
    assert_idle(running)


def test_virtual_clock_wait_and_tags(served, board):
    running, _ = served
    t0 = board.clock()
    assert t0 == pytest.approx(running.array.clock_sec, abs=1e-3)
    t1 = board.wait(7200.0)
    assert t1 - t0 == pytest.approx(7200.0, abs=0.01)
    board.read_cells(np.array([0]), np.array([0]))
    t2 = board.clock()
    assert 0.02 < t2 - t1 < 1.0  # one reading: NPLC 1 at 50 Hz with auto-zero, relays, latency
    rep = board.pulse(PulseBatch(np.array([1]), np.array([1]), np.array([3])), tag=42)
    assert rep.clock_sec == pytest.approx(board.clock(), abs=1e-3)
    assert board.status().last_pulse_tag == 42


def test_profiles_reach_the_generator(served, board):
    running, _ = served
    board.set_profiles(PulseProfile(amplitude_v=1.4, width_sec=100e-9), PulseProfile(amplitude_v=-1.7, width_sec=80e-9))
    board.pulse(PulseBatch(np.array([0, 1]), np.array([0, 0]), np.array([2, -2])))
    ch = running.generator.ch[1]
    assert (ch.high, ch.pulse_width) == (pytest.approx(1.7), pytest.approx(80e-9))  # the RESET phase ran last
    assert ch.lim_on and ch.lim_high == pytest.approx(2.5) and ch.load == float("inf")


def test_partial_pulses_set_the_generator_width_per_device(served, board):
    """bp's partial pulses: each device gets its last pulse at its own width, devices grouped by width."""
    running, _ = served
    n0 = len(running.generator.log)
    w = np.array([30e-9, 50e-9, 30e-9, 40e-9, 50e-9])  # 50 ns = the profile: full pulses
    board.pulse(PulseBatch(np.array([0, 0, 1, 2, 3]), np.array([0, 1, 1, 2, 3]), np.array([1, 2, 3, 1, 1]), w))
    log = running.generator.log[n0:]
    widths = [float(line.split()[-1]) for line in log if "PULS:WIDT " in line]
    # full-width devices at 50 ns; then (1,1): 2 full pulses and one of 30 ns while routed; then the
    # partial-only devices by width: (0,0) shares the 30 ns setting, (2,2) needs 40 ns
    assert widths == pytest.approx([50e-9, 30e-9, 40e-9], rel=1e-6)
    assert sum(line.strip() == "*TRG" for line in log) == 6
    assert [int(line.split()[-1]) for line in log if "BURS:NCYC " in line] == [2, 1, 2, 1]
    assert running.array.counters.pulses_total == 2 + 1 + 3 + 1 + 1 == board.status().pulses_total
    assert_idle(running)


# ---- limits: refused before any instrument receives a command ------------------------------------------
def test_out_of_limit_requests_send_nothing(served, board):
    running, _ = served
    n = log_lengths(running)
    with pytest.raises(LimitViolation, match="width"):
        board.set_profiles(PulseProfile(amplitude_v=1.6, width_sec=5e-9), PulseProfile(amplitude_v=-1.8, width_sec=5e-8))
    with pytest.raises(LimitViolation, match="SET amplitude"):
        board.set_profiles(PulseProfile(amplitude_v=4.0, width_sec=5e-8), PulseProfile(amplitude_v=-1.8, width_sec=5e-8))
    with pytest.raises(LimitViolation, match="max_pulses_per_device"):
        board.pulse(PulseBatch(np.array([0]), np.array([0]), np.array([300])))
    with pytest.raises(LimitViolation):
        board.smu.current_limit = 2.0  # beyond the 2450's rating
    with pytest.raises(LimitViolation):
        board.generator.high_level = 11.0
    assert log_lengths(running) == n


def test_open_refuses_settings_beyond_the_limits(served, tmp_path):
    running, path = served
    with pytest.raises(LimitViolation, match="max_read_v"):
        open_board(f"visa:{path}", SafetyLimits(max_read_v=0.1))  # the bench reads at 0.2 V
    text = path.read_text().replace("[pulse_generator]", "compliance_a = 5e-3\n\n[pulse_generator]")
    hot = tmp_path / "compliance.toml"
    hot.write_text(text)
    with pytest.raises(LimitViolation, match="compliance"):
        open_board(f"visa:{hot}")  # 5 mA asked, 1 mA allowed
    strict = running.write_bench_file(tmp_path / "strict.toml", limits={"max_set_v": 1.5})
    with open_board(f"visa:{strict}") as b:  # the bench's own limit tightens the default profile out
        assert b.info.hardware_limits.max_set_v == 1.5
        with pytest.raises(LimitViolation, match="SET amplitude"):
            b.pulse(PulseBatch(np.array([0]), np.array([0]), np.array([1])))
    assert running.generator.ch[1].lim_high == pytest.approx(2.5)  # generator limit = max(set 1.5, reset 2.5)


def test_refused_open_sends_nothing(tmp_path):
    with start_bench(2, 2, seed=1) as running:
        path = running.write_bench_file(tmp_path / "b.toml", timeout_sec=HANG_GUARD_SEC)
        with pytest.raises(LimitViolation):
            open_board(f"visa:{path}", SafetyLimits(max_read_v=0.1))
        assert log_lengths(running) == (0, 0, 0)


# ---- failures mid-operation ------------------------------------------------------------------------------------
def test_lost_smu_link_mid_read(served, board):
    running, _ = served
    running.servers["smu"].drop_after(12)
    with pytest.raises(LinkError) as info:
        board.read()
    assert "Keithley 2450" in str(info.value)
    partial = info.value.partial
    assert partial.shape == (ROWS, COLS)
    done = np.isfinite(partial)
    assert 0 < done.sum() < ROWS * COLS  # what was measured is kept
    truth = running.array.true_conductance_s(np.arange(ROWS * COLS)).reshape(ROWS, COLS)
    np.testing.assert_allclose(partial[done], truth[done], rtol=0.05)
    assert_idle(running)  # the SMU was reached again on a new connection and turned off
    g = board.read()  # the board recovers on its own
    assert np.all(np.isfinite(g))


def test_lost_matrix_link_mid_pulse(served, board):
    running, _ = served
    running.servers["switch_matrix"].drop_after(3)
    with pytest.raises(LinkError) as info:
        board.pulse(PulseBatch.from_dense(np.full((ROWS, COLS), 4)))
    rep = info.value.partial
    assert 0 < rep.devices < ROWS * COLS and rep.set_pulses == 4 * rep.devices
    assert running.array.counters.pulses_total == rep.set_pulses  # the report tells what was applied
    row, col, count = info.value.in_flight  # the device being routed when the link went
    assert count == 4 and (row * COLS + col) == rep.devices
    assert_idle(running)


def test_instrument_error_mid_read(served, board):
    running, _ = served
    running.smu.fault_after(20, 5074, "Output interlock tripped; output turned off")
    with pytest.raises(InstrumentError, match="interlock") as info:
        board.read()
    assert info.value.code == 5074
    assert np.isfinite(info.value.partial).sum() > 0
    assert_idle(running)


def test_instrument_error_mid_pulse(served, board):
    running, _ = served
    running.generator.fault_after(10, -240, "Hardware error;output protection")
    with pytest.raises(InstrumentError, match="-240"):
        board.pulse(PulseBatch.from_dense(np.full((ROWS, COLS), 2)))
    assert_idle(running)


def test_ctrl_c_mid_operation_leaves_the_bench_idle(served):
    running, path = served
    with pytest.raises(KeyboardInterrupt):
        with open_board(f"visa:{path}") as b:
            calls = {"n": 0}
            real = b.generator.fire_burst

            def interrupted(n):
                calls["n"] += 1
                if calls["n"] == 3:
                    raise KeyboardInterrupt
                return real(n)

            b.generator.fire_burst = interrupted
            b.pulse(PulseBatch.from_dense(np.full((ROWS, COLS), 2)))
    assert_idle(running)


def test_an_emulated_bench_file_on_real_instruments_is_refused(served, tmp_path):
    running, _ = served
    running.smu.vendor_commands = False  # answers :EMUL:CLOC? as a real 2450 does: -113, no reply
    # the driver learns it from the missing reply, so this bench file's timeout is what the test waits;
    # 10 s still leaves the answered exchanges before it a wide margin on a busy machine
    path = running.write_bench_file(tmp_path / "silent.toml", timeout_sec=10.0)
    with pytest.raises(InstrumentError, match="emulated = false"):
        open_board(f"visa:{path}")
    assert_idle(running)


def test_dead_instrument_is_a_link_error(tmp_path):
    running = start_bench(2, 2, seed=1)
    path = running.write_bench_file(tmp_path / "b.toml", timeout_sec=HANG_GUARD_SEC)
    running.servers["pulse_generator"].stop()  # its port refuses connections: no timeout involved
    try:
        with pytest.raises(LinkError, match="33500B"):
            open_board(f"visa:{path}")
        assert_idle(running)
    finally:
        running.stop()


# ---- clocks, switching modes -------------------------------------------------------------------------------------
def test_wall_clock_bench_sleeps(tmp_path):
    with start_bench(2, 2, seed=2, clock_mode="wall") as running:
        path = running.write_bench_file(tmp_path / "b.toml", timeout_sec=HANG_GUARD_SEC)
        assert "virtual_clock = false" in path.read_text()
        with open_board(f"visa:{path}") as b:
            assert not b.info.capabilities.virtual_clock
            t0, w0 = b.clock(), time.monotonic()
            t1 = b.wait(0.05)
            assert t1 - t0 >= 0.05 and time.monotonic() - w0 >= 0.05
            b.read_cells(np.array([0]), np.array([0]))
            assert running.array.clock_sec >= 0.05  # the array aged with real time
            with pytest.raises(BoardError):
                b.smu.write(":EMUL:WAIT 10")
                b.smu.check_errors()


def test_over_range_readings_saturate_at_full_scale(tmp_path):
    with start_bench(2, 3, seed=3) as running:
        path = running.write_bench_file(tmp_path / "b.toml", timeout_sec=HANG_GUARD_SEC)
        small = tmp_path / "small.toml"
        small.write_text(path.read_text().replace("current_range_a = 1e-4", "current_range_a = 1e-6"))
        with open_board(f"visa:{small}") as b:
            fs = b.info.g_full_scale_s
            assert fs == pytest.approx(1.05e-6 / 0.2)
            b.pulse(PulseBatch(np.array([0]), np.array([0]), np.array([60])))  # well above 5 uS
            g = b.read()
        assert np.all(np.isfinite(g)) and np.all(g <= fs) and g[0, 0] == pytest.approx(fs)
        truth = running.array.true_conductance_s(np.arange(6)).reshape(2, 3)
        low = truth < 0.9 * fs
        np.testing.assert_allclose(g[low], truth[low], rtol=0.05)


def test_hot_switching_option(tmp_path):
    with start_bench(2, 3, seed=3) as running:
        path = running.write_bench_file(tmp_path / "b.toml", timeout_sec=HANG_GUARD_SEC)
        hot = tmp_path / "hot.toml"
        hot.write_text(path.read_text().replace('output_off_mode = "NORM"',
                                                'output_off_mode = "NORM"\nhot_switching = true'))
        with open_board(f"visa:{hot}") as b:
            g = b.read()
        assert np.all(g > 0)
        assert running.bench.counters.hot_switches > 0  # faster, but the relays switched under 0.2 V
        assert_idle(running)


# ---- the bench file --------------------------------------------------------------------------------------------
GOOD = """
[bench]
rows = 2
cols = 3
[smu]
resource = "TCPIP::10.0.0.20::5025::SOCKET"
[pulse_generator]
resource = "TCPIP::10.0.0.21::5025::SOCKET"
[switch_matrix]
resource = "TCPIP::10.0.0.22::5025::SOCKET"
[wiring]
word_lines = "1-2"
bit_lines = [13, 14, 15]
"""


def test_bench_file_parses_with_defaults():
    cfg = parse_bench_file(GOOD)
    assert cfg.wiring.word_lines == [1, 2] and cfg.wiring.channel("C", 13) == "2C01"
    assert cfg.bench.visa_library == "@py" and not cfg.bench.virtual_clock and cfg.smu.read_voltage_v == 0.2


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('word_lines = "1-2"', 'word_lines = "1-3"'), "word_lines names 3"),
    (lambda t: t.replace("bit_lines = [13, 14, 15]", "bit_lines = [2, 14, 15]"), "more than one array line"),
    (lambda t: t.replace("bit_lines = [13, 14, 15]", "bit_lines = [13, 14, 99]"), "do not exist"),
    (lambda t: t + 'smu_hi = "Q"\n', "smu_hi"),
    (lambda t: t + 'pulse_hi = "A"\n', "four different matrix rows"),
    (lambda t: t.replace("cols = 3", "cols = 3\nvirtual_clock = true"), "needs emulated = true"),
    (lambda t: t.replace("[switch_matrix]\n", "[switch_matrix]\nfoo = 1\n"), r"\[switch_matrix\] foo"),
    (lambda t: t.replace("[smu]\n", "[smu]\nnplc = 50\n"), r"\[smu\] nplc"),
    (lambda t: t.replace('resource = "TCPIP::10.0.0.22::5025::SOCKET"',
                         'resource = "TCPIP::10.0.0.21::5025::SOCKET"'), "three different VISA resources"),
    (lambda t: t.replace("[wiring]", "[wiring"), "not valid TOML"),
    (lambda t: t.replace("[pulse_generator]\nresource", "[pulse_generator]\nresourc"), "pulse_generator"),
])
def test_bench_file_errors_name_the_field(edit, message):
    with pytest.raises(BenchFileError, match=message):
        parse_bench_file(edit(GOOD), "lab.toml")


def test_bench_file_missing_and_address_errors(tmp_path):
    with pytest.raises(BenchFileError, match="does not exist"):
        load_bench_file(tmp_path / "nope.toml")
    with pytest.raises(BenchFileError, match="does not exist"):
        open_board(f"visa:{tmp_path / 'nope.toml'}")
    with pytest.raises(BoardError, match="needs a bench file"):
        open_board("visa:")
    bad = tmp_path / "unreachable.toml"
    bad.write_text(GOOD.replace("10.0.0.22::5025", "127.0.0.1::1").replace("[bench]", "[bench]\ntimeout_sec = 0.3"))
    with pytest.raises(LinkError):
        open_board(f"visa:{bad}")


def test_reads_work_again_after_a_safe_idle(served, board):
    """A safe idle zeroes the SMU's source level; the next read must restore the read voltage."""
    running, _ = served
    before = board.read()
    board.safe_idle()
    after = board.read()
    truth = running.array.true_conductance_s(np.arange(ROWS * COLS)).reshape(ROWS, COLS)
    np.testing.assert_allclose(after, truth, rtol=0.05)
    np.testing.assert_allclose(after, before, rtol=0.1)
