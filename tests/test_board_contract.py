"""The Board contract on the in-process emulator: every operation, typed errors, safe idle on exit."""

from __future__ import annotations

import numpy as np
import pytest

from drivers import BoardError, LimitViolation, PulseBatch, PulseProfile, Region, SafetyLimits, open_board
from drivers.errors import AddressError
from firmware_stub.device_params import DeviceParams
from protocols.framing import PROTOCOL_VERSION


def test_info_describes_the_board(emu):
    info = emu.info
    assert (info.rows, info.cols) == (32, 48)
    assert info.emulated and info.capabilities.vmm and info.capabilities.vmm_transpose
    assert info.capabilities.write_verify and info.capabilities.virtual_clock
    assert info.protocol_version == PROTOCOL_VERSION == 5
    assert emu.limits.max_pulses_per_device <= info.hardware_limits.max_pulses_per_device


def test_every_board_reports_the_address_it_was_opened_with(emu, tcp_emulator):
    assert emu.address == "emu?rows=32&cols=48&seed=3"
    address = f"serial:{tcp_emulator.url}?timeout=30"
    with open_board(address) as board:
        assert board.address == address


def test_read_region_and_cells_agree(emu):
    g = emu.read()
    assert g.shape == (32, 48)
    assert np.all((g > 0) & (g < emu.info.g_full_scale_s))
    rows = np.array([5, 0, 5, 31])
    cols = np.array([7, 0, 7, 47])
    cells = emu.read_cells(rows, cols)
    assert cells[0] == cells[2]  # repeats come from one read
    np.testing.assert_allclose(cells, g[rows, cols], rtol=0.1)


def test_set_pulses_raise_and_reset_pulses_lower_conductance(emu):
    region = Region(0, 0, 8, 8)
    before = emu.read(region)
    emu.pulse(PulseBatch.from_dense(np.full((8, 8), 20)))
    after_set = emu.read(region)
    assert np.median(after_set - before) > 5e-6
    report = emu.pulse(PulseBatch.from_dense(np.full((8, 8), -20)))
    assert report.reset_pulses == 64 * 20 and report.devices == 64 and report.energy_j > 0
    assert np.median(emu.read(region) - after_set) < -2e-6


def test_status_counts_pulses_and_energy(emu):
    s0 = emu.status()
    emu.pulse(PulseBatch(np.array([1, 2]), np.array([3, 4]), np.array([3, -2])))
    s1 = emu.status()
    assert s1.pulses_total - s0.pulses_total == 5
    assert s1.set_pulses_total - s0.set_pulses_total == 3
    assert s1.write_energy_j > s0.write_energy_j
    assert s1.clock_sec > s0.clock_sec


def test_vmm_matches_read_conductances(emu):
    region = Region(0, 0, 16, 8)
    g = np.mean([emu.read(region) for _ in range(4)], axis=0)
    rng = np.random.default_rng(0)
    v = rng.uniform(-0.2, 0.2, size=(5, 16))
    i = emu.vmm(region, v)
    assert i.shape == (5, 8)
    ideal = v @ g
    assert np.max(np.abs(i - ideal)) < 0.05 * np.max(np.abs(ideal)) + 2e-7
    it = emu.vmm(region, v[:, :8], transpose=True)
    assert it.shape == (5, 16)
    np.testing.assert_allclose(it, v[:, :8] @ g.T, atol=0.05 * np.max(np.abs(v[:, :8] @ g.T)) + 2e-7)


def test_program_reaches_targets(emu):
    rows, cols = np.divmod(np.arange(40), 48)
    targets = np.linspace(20e-6, 80e-6, 40)
    rep = emu.program(rows, cols, targets, tolerance_s=2e-6, max_iter=60)
    assert rep.converged_fraction > 0.85
    ok = rep.converged
    assert np.all(np.abs(rep.achieved_s[ok] - targets[ok]) <= 2e-6 + emu.info.g_lsb_s)
    assert rep.pulses > 0


def test_virtual_clock_and_wait(emu):
    t0 = emu.clock()
    t1 = emu.wait(3600.0)
    assert t1 == pytest.approx(t0 + 3600.0)
    with pytest.raises(BoardError):
        emu.wait(-1)


def test_true_parameters_are_marked_emulator_only(emu):
    p = emu.true_parameters()
    assert p["emulator_only"] is True
    assert p["sigma_w_s"] == pytest.approx(1e-6)


def test_bad_requests_raise_typed_errors_and_send_nothing(emu):
    sent = emu.wire_bytes
    with pytest.raises(BoardError, match="outside"):
        emu.read(Region(30, 0, 4, 4))
    with pytest.raises(BoardError, match="more than once"):
        emu.pulse(PulseBatch(np.array([1, 1]), np.array([1, 1]), np.array([1, 1])))
    with pytest.raises(LimitViolation, match="max_pulses_per_device"):
        emu.pulse(PulseBatch(np.array([1]), np.array([1]), np.array([400])))
    with pytest.raises(LimitViolation, match="SET amplitude"):
        emu.set_profiles(PulseProfile(amplitude_v=4.0, width_sec=50e-9), PulseProfile(amplitude_v=-1.8, width_sec=50e-9))
    with pytest.raises(LimitViolation, match="pulse width"):
        emu.set_profiles(PulseProfile(amplitude_v=1.6, width_sec=1.0), PulseProfile(amplitude_v=-1.8, width_sec=50e-9))
    with pytest.raises(LimitViolation, match="max_read_v|DAC"):
        emu.vmm(Region(0, 0, 4, 4), np.full((1, 4), 0.45))
    with pytest.raises(BoardError, match="targets"):
        emu.program(np.array([0]), np.array([0]), np.array([1.0]), 1e-6)
    assert emu.wire_bytes == sent  # not one byte left the host


def test_user_limits_tighten_the_hardware_limits():
    with open_board("emu?rows=4&cols=4", limits=SafetyLimits(max_set_v=1.5, max_pulses_per_device=10)) as b:
        assert b.limits.max_set_v == 1.5 and b.limits.max_pulses_per_device == 10
        assert b.limits.max_reset_v <= b.info.hardware_limits.max_reset_v
        with pytest.raises(LimitViolation):  # the default SET profile (1.6 V) is now beyond the limit
            b.pulse(PulseBatch(np.array([0]), np.array([0]), np.array([1])))


def test_firmware_checks_limits_again():
    """A host that skips its checks still cannot overdrive the emulated board."""
    from firmware_stub.firmware import make_emulator
    from protocols import messages as m
    from protocols.messages import Op, Status
    from protocols.session import ClientSession

    endpoint = make_emulator(4, 4, seed=0)
    array = endpoint.firmware.array
    digest, clock = array.state_digest(), array.clock_sec
    client = ClientSession()
    client.receive_data(endpoint.receive(client.request(Op.HELLO, client.hello_payload())))  # open a session
    reply = client.receive_data(endpoint.receive(client.request(Op.SET_PROFILES, m.encode_profiles(5.0, 5e-8, -1.8, 5e-8))))
    assert reply.status == Status.LIMIT_VIOLATION and b"SET amplitude" in reply.payload
    reply = client.receive_data(endpoint.receive(client.request(
        Op.PULSE, m.encode_pulse_request(np.array([0]), np.array([999])))))
    assert reply.status == Status.LIMIT_VIOLATION
    assert array.clock_sec > clock  # the refused requests' frames took their time on the link ...
    array.clock_sec = clock
    assert array.state_digest() == digest  # ... and changed nothing else


@pytest.mark.parametrize("address, message", [
    ("emu?rows=abc", "not a valid int"),
    ("emu?bogus=1", "unknown option"),
    ("emu?config=/nonexistent.toml", "does not exist"),
    ("ftp://x", "unknown board address"),
    ("serial:/dev/does-not-exist", "cannot open serial link"),
    ("serial:", "needs a device path"),
])
def test_bad_addresses_get_clear_errors(address, message):
    with pytest.raises(AddressError if not address.startswith("serial:/") else BoardError, match=message):
        open_board(address)


def test_same_seed_same_board_state():
    digests = []
    for _ in range(2):
        with open_board("emu?rows=16&cols=16&seed=11") as b:
            b.pulse(PulseBatch.from_dense(np.random.default_rng(0).integers(-3, 4, size=(16, 16))))
            b.read()
            digests.append(b.status(with_digest=True).state_digest)
    assert digests[0] == digests[1]


def test_context_manager_leaves_board_idle_on_error():
    from drivers.fpga import FpgaBoard

    board = open_board("emu?rows=4&cols=4")
    assert isinstance(board, FpgaBoard)
    endpoint = board.link.endpoint
    with pytest.raises(KeyboardInterrupt):
        with board:
            endpoint.firmware.idle = False
            raise KeyboardInterrupt
    assert endpoint.firmware.idle


def test_write_verify_obeys_the_pulse_count_limits():
    """Every write-verify round is a pulse batch: no device gets more pulses than max_pulses_per_device."""
    with open_board("emu?rows=4&cols=4&seed=2", limits=SafetyLimits(max_pulses_per_device=4)) as b:
        array = b.link.endpoint.firmware.array
        before = array.n_pulses.copy()
        rep = b.program(np.arange(4), np.zeros(4, dtype=int), np.full(4, 90e-6), tolerance_s=1e-6, max_iter=3)
        assert rep.iterations.max() <= 3
        assert np.all(array.n_pulses - before <= 4 * 3)  # at most 4 pulses per round, 3 rounds


def test_vmm_input_rounding_never_exceeds_the_read_limit():
    from firmware_stub.firmware import make_emulator
    from drivers.fpga import FpgaBoard
    from drivers.links import InProcessLink

    endpoint = make_emulator(4, 4, seed=0)
    seen = []
    original = endpoint.firmware.array.vmm
    endpoint.firmware.array.vmm = lambda *a, **k: (seen.append(np.max(np.abs(a[4]))), original(*a, **k))[1]
    with FpgaBoard(InProcessLink(endpoint), limits=SafetyLimits(max_read_v=0.13)) as b:
        b.vmm(Region(0, 0, 4, 4), np.full((1, 4), 0.13))
    assert seen and seen[0] <= 0.13


def test_partial_pulses_are_applied_as_one_write_event(emu):
    s0 = emu.status()
    w = np.array([50e-9, 7.3e-9, 0.1e-9])  # full, partial, the hardware's one-tick minimum
    rep = emu.pulse(PulseBatch(np.array([1, 2, 3]), np.array([3, 4, 5]), np.array([3, -1, 1]), w))
    s1 = emu.status()
    assert (rep.devices, rep.set_pulses, rep.reset_pulses) == (3, 4, 1)
    assert s1.write_events_total - s0.write_events_total == 3


def test_out_of_window_widths_are_refused_before_any_byte(emu):
    digest = emu.status(with_digest=True).state_digest
    sent = emu.wire_bytes
    cases = [
        (np.array([0.05e-9]), "min_pulse_width_sec"),   # below the hardware's minimum
        (np.array([60e-9]), "exceeds its profile"),   # longer than a full pulse
        (np.array([np.nan]), "NaN"),
        (np.array([5e-9, 5e-9]), "one entry per device"),
    ]
    for widths, message in cases:
        with pytest.raises((LimitViolation, BoardError), match=message):
            emu.pulse(PulseBatch(np.array([0]), np.array([0]), np.array([1]), widths))
        assert emu.wire_bytes == sent
    strict = SafetyLimits(min_pulse_width_sec=20e-9)  # the user's floor tightens the hardware's
    with open_board("emu?rows=4&cols=4", strict) as b:
        n = b.wire_bytes
        with pytest.raises(LimitViolation, match="min_pulse_width_sec"):
            b.pulse(PulseBatch(np.array([0]), np.array([0]), np.array([1]), np.array([10e-9])))
        assert b.wire_bytes == n
    assert emu.status(with_digest=True).state_digest == digest  # and the array never saw a pulse


def test_firmware_refuses_a_width_beyond_its_limits_and_changes_nothing():
    from firmware_stub.firmware import make_emulator
    from protocols import messages as m
    from protocols.messages import Op, Status
    from protocols.session import ClientSession

    endpoint = make_emulator(4, 4, seed=0)
    array = endpoint.firmware.array
    before = (array.g.copy(), array.n_pulses.copy(), array.counters.pulses_total)
    client = ClientSession()
    client.receive_data(endpoint.receive(client.request(Op.HELLO, client.hello_payload())))  # open a session
    for ticks, text in (([600], b"profile"), ([0, 2 * 10**7], b"outside")):
        flat = np.arange(len(ticks))
        reply = client.receive_data(endpoint.receive(client.request(
            Op.PULSE, m.encode_pulse_request(flat, np.ones(len(ticks), np.int64), 0, np.array(ticks)))))
        assert reply.status == Status.LIMIT_VIOLATION and text in reply.payload
    # nothing applied (the board clock still runs: a refused request cost its link time)
    assert np.array_equal(array.g, before[0]) and np.array_equal(array.n_pulses, before[1])
    assert array.counters.pulses_total == before[2]


# ---- board time --------------------------------------------------------------------------
def _exchange(endpoint, client, op, payload=b""):
    return client.receive_data(endpoint.receive(client.request(op, payload)))


def test_board_clock_charges_frames_at_the_nominal_rate_and_a_latency_per_command():
    """A bench's clock: each array command costs its frames at 3 Mbaud (10 bits a byte), a latency, its operation."""
    from firmware_stub.firmware import make_emulator, message_wire_bytes
    from protocols import messages as m
    from protocols.messages import Op
    from protocols.session import ClientSession

    endpoint, client = make_emulator(8, 8, seed=0), ClientSession()
    _exchange(endpoint, client, Op.HELLO, client.hello_payload())  # open a session (no board time)
    array, p = endpoint.firmware.array, endpoint.firmware.params
    assert (p.link_baud, p.link_bits_per_byte) == (3e6, 10)  # the documented defaults
    request = m.encode_cells(np.arange(10))  # cells of rows 0 and 1
    t0 = array.clock_sec
    reply = _exchange(endpoint, client, Op.READ_CELLS, request)
    wire_bytes = sum(message_wire_bytes(n, client.chunk_bytes, session=True) for n in (len(request), len(reply.payload)))
    expected = wire_bytes * 10 / 3e6 + p.t_link_turnaround_sec + p.t_command_sec + 2 * p.t_read_row_sec
    assert array.clock_sec - t0 == pytest.approx(expected, rel=1e-9, abs=0)
    t1 = array.clock_sec
    for op in (Op.STATUS, Op.CLOCK, Op.SNAPSHOT):  # housekeeping and emulator-only commands: no board time
        _exchange(endpoint, client, op)
    assert array.clock_sec == t1


def test_the_link_rate_is_a_device_setting_and_sets_the_board_time(tmp_path):
    slow = tmp_path / "slow.toml"
    slow.write_text("link_baud = 300000\n")
    spans = []
    for config in ("", f"&config={slow}"):
        with open_board(f"emu?rows=16&cols=16{config}") as board:
            t0 = board.clock()
            board.read()
            spans.append(board.clock() - t0)
    p = DeviceParams()
    op = p.t_link_turnaround_sec + p.t_command_sec + 16 * p.t_read_row_sec
    assert (spans[1] - op) == pytest.approx(10 * (spans[0] - op), rel=1e-9)


# ---- device presets ------------------------------------------------------------------------
def test_device_presets_by_address_with_config_overrides(tmp_path):
    from firmware_stub.device_params import preset_names

    assert {"default", "noisy2x", "paper"} <= set(preset_names())
    default = DeviceParams()
    with open_board("emu?rows=8&cols=8&preset=noisy2x") as board:
        truth = board.true_parameters()
        assert board.info.device_preset == "noisy2x" and board.info.device_config is None
    assert truth["sigma_w_s"] == 2 * default.sigma_w_s and truth["sigma_c2c"] == 2 * default.sigma_c2c
    override = tmp_path / "over.toml"
    override.write_text("[device]\nsigma_c2c = 0.5\n")
    with open_board(f"emu?rows=8&cols=8&preset=noisy2x&config={override}") as board:
        truth = board.true_parameters()
        assert board.info.device_config == str(override)
    assert truth["sigma_w_s"] == 2 * default.sigma_w_s and truth["sigma_c2c"] == 0.5
    with pytest.raises(AddressError, match="unknown device preset 'nope'"):
        open_board("emu?preset=nope")


def test_paper_preset_is_the_published_write_error_on_our_weight_scale():
    """Published: sigma 2 uS on a weight unit of 80 uS.  Ours: |W| = w_max (0.75 for digits) spans 80 % of the window."""
    from firmware_stub.device_params import load_device_params
    from hil.train import TrainConfig

    p = load_device_params(preset="paper")
    w_max = TrainConfig(task="digits").w_max
    g_per_weight = 0.8 * (p.g_max_s - p.g_min_s) / w_max
    assert p.sigma_w_s / g_per_weight == pytest.approx(2 / 80, rel=0.01)
    assert p.model_dump(exclude={"sigma_w_s"}) == DeviceParams().model_dump(exclude={"sigma_w_s"})
