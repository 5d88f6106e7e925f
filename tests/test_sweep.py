"""``hil sweep`` on Ray: kill and resume on the embedded local Ray, a bench as a resource of one on a
two-node cluster, and one-line errors for bad specs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hil.cli import cli
from hil.sweep_boards import board_resource
from tests.run_checks import assert_same_run
from tests.sweep_checks import assert_spec_refused
from tests.waiting import HANG_GUARD_SEC, wait_until

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
SMALL_BOARD = "emu?rows=32&cols=96"
def _state(pid: int) -> str:
    """A process's state letter from /proc (Z: a zombie, gone but for its parent's wait)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "Z"
    return stat.rsplit(")", 1)[1].split()[0]


def _descendants(root: int) -> list[int]:
    """Every process descended from ``root``, from /proc (children, their children, ...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    out, frontier = [], [root]
    while frontier:
        kids = [pid for pid, ppid in parents.items() if ppid in frontier]
        out += kids
        frontier = kids
    return out


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _points(out: Path) -> list[dict]:
    return json.loads((out / "sweep.json").read_text())["points"]


def _same_run_alone(point: dict, out: Path) -> dict:
    """The point's run done alone with ``hil train`` (its calibration file, if it had one)."""
    cfg = point["config"]
    args = ["train", "--board", cfg["board"], "--task", cfg["task"], "--method", cfg["method"],
            "--epochs", str(cfg["epochs"]), "--seed", str(cfg["seed"]), "--out", str(out), "--quiet"]
    if cfg["calibration"]:
        args += ["--calibration", cfg["calibration"]]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


def _steps_logged(run: Path) -> int:
    try:
        return sum('"kind": "step"' in line for line in (run / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def _kill_in_first_epoch(proc: subprocess.Popen, runs: Path) -> list[int]:
    """Wait for an array run to checkpoint in its first epoch, then SIGKILL the sweep and every process
    descended from it; the pids killed besides the driver."""

    def alive():
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended before it was killed: {proc.stderr.read().decode()[-2000:]}")

    def midway() -> bool:
        """An array run checkpointed in its first epoch (of two): far from its end, so the kill cannot land
        after it finished (whether other points finished by then is up to Ray's order)."""
        return any(not (p.parent / "summary.json").exists() and 0 < _steps_logged(p.parent) < 30
                   for p in runs.glob("*eapu*/checkpoint.json"))

    try:
        wait_until(midway, "an array run in its first epoch", timeout_sec=4 * HANG_GUARD_SEC, poll_sec=0.05,
                   alive=alive)
    finally:
        tree = _descendants(proc.pid)  # Ray's workers leave the driver's process group: kill them by ancestry
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its embedded Ray: the whole process group
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(HANG_GUARD_SEC)
    return tree


def _wait_all_gone(pids: list[int]) -> None:
    def all_gone() -> bool:
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            if _state(pid) != "Z":
                return False
        return True

    wait_until(all_gone, "the killed sweep's processes exiting", poll_sec=0.05)


@pytest.mark.timing
@pytest.mark.slow  # whole sweeps on Ray: in the test run, not in the loaded rerun of CI
@pytest.mark.timeout(900)
def test_sweep_killed_midway_resumes_to_the_runs_hil_train_makes_alone(tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(f'[base]\nboard = "{SMALL_BOARD}"\ntask = "digits-small"\nepochs = 2\n\n'
                    '[grid]\nseed = [0, 1]\nmethod = ["float", "eapu"]\n')
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "hil.cli", "sweep", str(spec), "--out", str(out), "--num-cpus", "2", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    runs = out / "runs"
    tree = _kill_in_first_epoch(proc, runs)
    _wait_all_gone([proc.pid, *tree])
    states = {p["name"]: p["state"] for p in _points(out)}
    assert "pending" in states.values() or "running" in states.values(), states
    interrupted = [p.parent.name for p in runs.glob("*/checkpoint.json") if not (p.parent / "summary.json").exists()]
    assert interrupted, sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.suffix in (".json", ".jsonl"))

    resumed = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                             timeout=4 * HANG_GUARD_SEC)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Ray" not in resumed.stderr and "dashboard" not in resumed.stderr, resumed.stderr  # no engine noise
    assert "task digits-small" in resumed.stdout
    points = _points(out)
    assert len(points) == 4 and all(p["state"] == "done" for p in points), points
    for point in points:
        run_dir = Path(point["dir"])
        swept = json.loads((run_dir / "summary.json").read_text())
        alone = _same_run_alone(point, tmp_path / "alone" / point["name"])
        assert_same_run(swept, alone)
    assert (out / "comparison.md").is_file() and (out / "comparison_digits-small.png").is_file()


@pytest.fixture(scope="module")
def bench():
    """An emulated FPGA bench served on a real TCP socket, as a physical board would be reached."""
    from firmware_stub.firmware import make_emulator
    from firmware_stub.serve import TcpServer, serve_in_thread

    server = TcpServer(make_emulator(32, 96, seed=7), "127.0.0.1", 0)
    thread = serve_in_thread(server)
    yield f"serial:{server.url}"
    server.stop.set()
    thread.join(HANG_GUARD_SEC)


@pytest.fixture(scope="module")
def two_node_cluster(bench):
    """A Ray cluster of two nodes on this machine; only the head holds the bench's resource."""
    from ray.cluster_utils import Cluster

    resource = board_resource(bench)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {resource: 1}, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, resource
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.timing
@pytest.mark.slow  # whole sweeps on Ray: in the test run, not in the loaded rerun of CI
@pytest.mark.timeout(900)
def test_bench_points_run_one_at_a_time_on_the_node_that_holds_the_bench(tmp_path, bench, two_node_cluster):
    from hil.sweep_engine import run_sweep

    _, resource = two_node_cluster
    assert resource.startswith("board:tcp_127.0.0.1_")
    spec = tmp_path / "sweep.toml"
    spec.write_text('[base]\ntask = "digits-small"\nepochs = 1\nmethod = "eapu"\n\n'
                    f'[grid]\nboard = ["{bench}", "{SMALL_BOARD}"]\nseed = [0, 1, 2]\n')
    result = run_sweep(spec, tmp_path / "sweep", progress=False)
    assert not result.failed, result.failed
    data = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    bench_node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and resource in n["Resources"])
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2

    on_bench = [r for r in data["points"] + data["calibrations"] if r["resource"] == resource]
    on_emu = [r for r in data["points"] + data["calibrations"] if r["resource"] is None]
    assert len(on_bench) == 4 and len(on_emu) == 6  # 3 points + 1 shared calibration; 3 points + 3 calibrations
    assert {r["node_id"] for r in on_bench} == {bench_node}
    spans = sorted((r["started_sec"], r["ended_sec"]) for r in on_bench)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans
    assert {r["node_id"] for r in on_emu} == nodes
    for r in on_bench:
        if r["kind"] == "point":
            assert json.loads((Path(r["dir"]) / "config.json").read_text())["board"] == bench


BAD_SPECS = {
    "unknown axis": ('[grid]\nlearning_rate = [0.1]\n', "unknown setting 'learning_rate'"),
    "bad value": ('[grid]\nlr = [0.1, -1]\n', "lr"),
    "zip lengths": ('[zip]\nlr = [0.1, 0.2]\nseed = [1]\n', "one length"),
    "not toml": ('[grid\nlr = 1\n', "not valid TOML"),
    "unknown device field": ('[device]\nsigma_x = 1\n', "unknown device parameter 'sigma_x'"),
    "device on a bench": ('[base]\nboard = "serial:/dev/ttyUSB9"\n[device]\nsigma_w_s = 1e-6\n', "emulated boards"),
    "bad mode": ('[sweep]\ncalibrate = "sometimes"\n', "calibrate"),
    "unknown table": ('[axes]\nlr = [1]\n', "axes"),
    "bad seeds": ('[grid]\nseed = "a-b"\n', "seed"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_specs_end_with_one_line_and_nothing_written(tmp_path, case):
    text, says = BAD_SPECS[case]
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    assert_spec_refused(spec, tmp_path / "out", says)


def test_board_resource_names():
    assert board_resource("serial:socket://127.0.0.1:5555?timeout=3") == "board:tcp_127.0.0.1_5555"
    assert board_resource("serial:/dev/ttyUSB0?baud=3000000") == "board:serial_dev_ttyUSB0"
    assert board_resource("visa:/lab/benches/probe-2.toml") == "board:visa_probe-2"
    assert board_resource("emu?seed=3") is None


def test_swept_device_parameters_are_drawn_with_their_units():
    from hil.sweep_report import axis_scale

    assert axis_scale("device.sigma_w_s") == ("device.sigma_w_s (µS)", 1e6)
    assert axis_scale("device.g_max_s") == ("device.g_max_s (µS)", 1e6)
    assert axis_scale("device.relax_t0_sec") == ("device.relax_t0_sec (s)", 1.0)
    assert axis_scale("delta_g_th_k") == ("delta_g_th_k", 1.0)
