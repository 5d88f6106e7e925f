"""What a person sees from ``hil``: the train table and ``--json``, ``--version``, ``software_version`` in every
JSON the stack writes, one-line errors for bad options, characterize's refusal to overwrite, progress bars,
and plots with units and titles."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import h5py
import matplotlib.figure
import numpy as np
import pytest
from click.testing import CliRunner

from hil.cli import cli, main
from protocols.version import software_version

ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD_SEC = 600
SMALL = "emu?rows=64&cols=64&seed=3"


def run_main(*args: str, capsys) -> tuple[int, str, str]:
    """``hil ARGS`` through the real entry point (click's usage errors included), in this process."""
    argv = sys.argv
    sys.argv = ["hil", *args]
    try:
        with pytest.raises(SystemExit) as info:
            main()
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A digital and an array run of digits-small, one epoch each (the array run calibrates its board)."""
    root = tmp_path_factory.mktemp("runs")
    results = {}
    for method, extra in (("float", []), ("eapu", ["--board", SMALL])):
        out = root / method
        text = CliRunner().invoke(cli, ["train", "--method", method, "--task", "digits-small", "--epochs", "1",
                                        "--out", str(out), "--quiet", *extra])
        assert text.exit_code == 0, text.output
        results[method] = (out, text.stdout)
    return results


def test_train_ends_with_a_short_table_naming_the_summary(runs):
    out, text = runs["eapu"]
    lines = text.strip().splitlines()
    assert len(lines) <= 12 and not text.lstrip().startswith("{")
    summary = json.loads((out / "summary.json").read_text())
    assert lines[-1].split() == ["summary", str(out / "summary.json")]
    assert any(line.startswith("test accuracy") and f"{100 * summary['test_accuracy']:.1f} %" in line
               for line in lines)
    assert any(line.startswith("energy") and "total" in line for line in lines)
    assert any(line.startswith("board") and SMALL in line for line in lines)
    config = json.loads((out / "config.json").read_text())
    threshold = config["delta_g_th_k"] * json.loads((out / "calibration.json").read_text())["delta_g_th_s"]
    assert any(line.startswith("ΔGth used") and f"{threshold * 1e6:.3g} µS" in line for line in lines)
    assert not any(k.endswith("_s") and k not in ("board_time_s", "wall_s") for k in summary)  # seconds only
    float_text = runs["float"][1]
    assert "energy" not in float_text and "board" not in float_text  # a digital run has neither


def test_train_json_is_the_summary(tmp_path):
    r = CliRunner().invoke(cli, ["train", "--method", "float", "--task", "digits-small", "--epochs", "1",
                                 "--out", str(tmp_path / "run"), "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    assert printed == json.loads((tmp_path / "run" / "summary.json").read_text())
    assert printed["software_version"] == software_version() and printed["method"] == "float"


def test_version(capsys):
    code, out, _ = run_main("--version", capsys=capsys)
    assert code == 0 and out.strip() == f"hil {software_version()}"
    proc = subprocess.run([sys.executable, "-m", "hil.cli", "--version"], capture_output=True, text=True, cwd=ROOT,
                          timeout=HANG_GUARD_SEC)
    assert proc.returncode == 0 and proc.stdout.strip() == f"hil {software_version()}"


def test_every_json_a_run_writes_names_the_software_version(runs):
    for method, names in (("float", ("config.json", "summary.json", "checkpoint.json")),
                          ("eapu", ("config.json", "board.json", "calibration.json", "summary.json",
                                    "checkpoint.json", "calibration/calibration.json"))):
        out = runs[method][0]
        for name in names:
            assert json.loads((out / name).read_text())["software_version"] == software_version(), (method, name)
    with h5py.File(runs["eapu"][0] / "calibration" / "calibration.h5", "r") as f:
        assert f.attrs["software_version"] == software_version()


def test_json_outputs_of_the_commands_name_the_software_version(runs, tmp_path):
    for args in (["info", "--board", "emu?rows=4&cols=4", "--json"],
                 ["compare", str(runs["float"][0]), str(runs["eapu"][0]), "--json", "--no-plot"]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["software_version"] == software_version(), args
    r = CliRunner().invoke(cli, ["characterize", "read-all", "--board", "emu?rows=4&cols=4", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "read_all.h5", "r") as f:
        assert f.attrs["software_version"] == software_version()


def test_resume_still_reads_a_config_that_names_the_version(runs):
    from hil.train import load_config_for_resume

    cfg = load_config_for_resume(runs["float"][0])
    assert cfg.method == "float"


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"task": "digits", "method": "bp", "test_accuracy": 0.5}))
    (tmp_path / "limits.toml").write_text('max_set_v = "high"\ncolour = 3\n')
    (tmp_path / "device.toml").write_text("g_min_s = -1\n")
    (tmp_path / "empty").mkdir()
    return tmp_path


BAD = [
    (["--limits", "{d}/limits.toml", "info", "--board", "emu?rows=4&cols=4"], "max_set_v"),
    (["info", "--board", "serial:socket://127.0.0.1:99999"], "PORT in 1..65535"),
    (["info", "--board", "emu?rows=abc"], "rows"),
    (["train", "--method", "float", "--hidden", "0", "--out", "{d}/t"], "at least 1"),
    (["train", "--board", "emu?rows=64&cols=64", "--task", "digits-small", "--calibration", "{d}/summary.json",
      "--out", "{d}/t"], "give the calibration.json"),
    (["train", "--epochs", "0", "--out", "{d}/t"], "--epochs"),
    (["train", "--board", "emu?rows=8&cols=8", "--out", "{d}/t"], "--task digits-small --hidden 2, needs 16 rows"),
    (["train", "--board", "emu?rows=20&cols=20", "--out", "{d}/t"], "--task digits-small --hidden 4 fits"),
    (["train", "--task", "cifar", "--out", "{d}/t"], "--task"),
    (["calibrate", "--board", "emu?rows=4&cols=4", "--out", "{d}/c", "--set-width", "-1"], "width_sec"),
    (["characterize", "retention", "--board", "emu?rows=4&cols=4", "--out", "{d}/r", "--tolerance", "-1"],
     "tolerance_s"),
    (["characterize", "iv-sweep", "--board", "emu?rows=4&cols=4", "--out", "{d}/r", "--step", "-0.1"], "step_v"),
    (["characterize", "forming", "--board", "emu?rows=4&cols=4", "--out", "{d}/r", "--v-start", "9"], "v_start_v"),
    (["characterize", "endurance", "--board", "emu?rows=4&cols=4", "--out", "{d}/r", "--region", "0,0,0,0"],
     "ROWS,COLS >= 1"),
    (["characterize", "read-all", "--board", "emu?rows=4&cols=4", "--out", "{d}/r", "--reads", "x"], "--reads"),
    (["emulator", "serve", "--tcp", "127.0.0.1:99999"], "0..65535"),
    (["emulator", "serve", "--pty", "--config", "{d}/device.toml"], "g_min_s"),
    (["emulator", "serve-bench", "--out", "{d}/b.toml", "--rows", "0"], "--rows"),
    (["demo", "--seeds", "x", "--out", "{d}/demo"], "--seeds"),
    (["compare", "{d}/empty"], "holds no summary.json"),
    (["--no-such-option"], "no-such-option"),
]


@pytest.mark.parametrize("args,expected", BAD, ids=[" ".join(a[:2]) + f" {e}" for a, e in BAD])
def test_a_bad_value_is_one_line_without_traceback(bad_files, capsys, args, expected):
    code, out, err = run_main(*[a.replace("{d}", str(bad_files)) for a in args], capsys=capsys)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err


def test_characterize_refuses_to_overwrite(tmp_path):
    args = ["characterize", "read-all", "--board", "emu?rows=4&cols=4&seed=1", "--out", str(tmp_path)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    before = (tmp_path / "read_all.h5").read_bytes()
    r = CliRunner().invoke(cli, [*args[:3], "emu?rows=4&cols=4&seed=2", *args[4:]])
    assert r.exit_code == 2 and "--overwrite" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (tmp_path / "read_all.h5").read_bytes() == before
    r = CliRunner().invoke(cli, [*args[:3], "emu?rows=4&cols=4&seed=2", *args[4:], "--overwrite"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "read_all.h5").read_bytes() != before


def _stderr_on_a_terminal(args: list[str]) -> tuple[int, str]:
    """Run ``hil ARGS`` with stderr on a pseudo-terminal (tqdm draws only there); returns status and stderr."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 columns wide
    proc = subprocess.Popen([sys.executable, "-m", "hil.cli", *args], stdout=subprocess.DEVNULL, stderr=follower,
                            cwd=ROOT)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the follower closed: the process has ended
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=HANG_GUARD_SEC), b"".join(chunks).decode(errors="replace")


def test_characterize_shows_a_progress_bar_with_a_time_estimate(tmp_path):
    code, err = _stderr_on_a_terminal(["characterize", "pulse-response", "--board", "emu?rows=8&cols=8",
                                       "--out", str(tmp_path), "--devices", "4", "--steps", "3",
                                       "--pulses-per-step", "2"])
    assert code == 0, err
    assert "pulse-response" in err and "100%" in err and "<" in err  # [elapsed<remaining]
    code, err = _stderr_on_a_terminal(["characterize", "read-all", "--board", "emu?rows=8&cols=8",
                                       "--out", str(tmp_path / "q"), "--no-progress"])
    assert code == 0 and "%" not in err, err


# ---- plots ------------------------------------------------------------------------------------------------
@pytest.fixture
def saved_figures(monkeypatch):
    """Every figure the stack saves, as (file name, [(title, xlabel, ylabel) per data axes], suptitle)."""
    seen = []
    real = matplotlib.figure.Figure.savefig

    def record(fig, path, *args, **kwargs):
        axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        colorbars = [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]
        sup = fig._suptitle.get_text() if fig._suptitle is not None else ""
        seen.append((Path(path).name, [(ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) for ax in axes], sup,
                     colorbars, fig))
        return real(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    return seen


def _check_labelled(seen):
    for name, axes, sup, colorbars, _ in seen:
        for title, xlabel, ylabel in axes:
            assert (title or sup) and xlabel and ylabel, (name, title, xlabel, ylabel)
            for text in (title, xlabel, ylabel, *colorbars):
                assert "uS" not in text, (name, text)
                if text.startswith(("G ", "mean G", "ΔG")) or " G (" in text:
                    assert "µS" in text, (name, text)
        assert all("µS" in c or "(" in c for c in colorbars), (name, colorbars)


def test_characterization_plots_have_units_titles_and_centred_differences(tmp_path, saved_figures):
    from calibration import characterize as ch
    from drivers.address import open_board

    with open_board("emu?rows=8&cols=8&seed=4") as board:
        ch.run("read-all", board, ch.ReadAllParams(), tmp_path)
        ch.run("program", board, ch.ProgramParams(region=(0, 0, 4, 4), max_iter=5), tmp_path,
               targets_s=ch.target_pattern("gradient", (4, 4), 10e-6, 60e-6))
        ch.run("pulse-response", board, ch.CharPulseResponseParams(n_devices=4, steps=3, pulses_per_step=2), tmp_path)
        ch.run("iv-sweep", board, ch.IvSweepParams(n_devices=2), tmp_path)
        ch.run("retention", board, ch.RetentionParams(n_devices=4, targets_s=(20e-6, 40e-6), n_times=3,
                                                      t_max_sec=10.0), tmp_path)
    names = [s[0] for s in saved_figures]
    assert names == ["read_all.png", "program.png", "pulse_response.png", "iv_sweep.png", "retention.png"]
    _check_labelled(saved_figures)
    program = saved_figures[1][4]
    diff = next(im for ax in program.axes for im in ax.get_images() if ax.get_title() == "final - target")
    lo, hi = diff.get_clim()
    assert lo == -hi and diff.get_cmap().name.startswith("RdBu")  # centred on zero
    iv = saved_figures[3][4].axes[0]
    for line in iv.get_lines():
        y = line.get_ydata()
        assert np.all(np.isnan(y) | (y > 1e-6)), "0 V or no current: a gap, not a spike to 1e-12"


def test_a_stuck_device_does_not_wash_out_the_map(tmp_path):
    import matplotlib.pyplot as plt

    from calibration.plots import conductance_image

    g = np.random.default_rng(0).uniform(20e-6, 60e-6, (16, 16))
    g[3, 4] = 200e-6  # stuck high
    g[5, 6] = 0.0  # stuck low
    fig, ax = plt.subplots()
    im = conductance_image(fig, ax, g, "map")
    lo, hi = im.get_clim()
    plt.close(fig)
    assert 19 < lo < 25 and 55 < hi < 61  # µS: the range of the working devices
    assert g[3, 4] * 1e6 > hi and g[5, 6] * 1e6 < lo  # drawn in the over / under colours
    assert "beyond the 1-99 % range" in ax.get_title()


def test_run_plots_name_the_run_and_skip_what_a_method_lacks(runs, saved_figures):
    from hil.plots import plot_run

    float_dir, eapu_dir = runs["float"][0], runs["eapu"][0]
    assert not (float_dir / "write_fraction.png").exists() and not (float_dir / "conductance_maps.png").exists()
    assert (eapu_dir / "write_fraction.png").exists() and (eapu_dir / "conductance_maps.png").exists()
    paths = plot_run(float_dir)
    assert [p.name for p in paths] == ["learning_curves.png"]
    _check_labelled(saved_figures)
    assert saved_figures[0][2].startswith("float on digits-small, seed 0")


def test_comparison_draws_no_array_figure_for_the_digital_reference(runs, tmp_path, saved_figures):
    from hil import compare as cmp
    from hil.plots import plot_comparison

    groups, _ = cmp.compare([runs["float"][0], runs["eapu"][0]])
    plot_comparison(groups, tmp_path)
    (name, axes, sup, _, fig), = saved_figures
    assert name == "comparison_digits-small.png" and "digits-small" in sup
    bars = {ax.get_title(): len(ax.patches) for ax in fig.axes}
    assert bars["test accuracy (%)"] == 2  # float and eapu
    assert bars["write energy (J)"] == 1 and bars["total training energy (J)"] == 1  # eapu only: no bar at zero
    _check_labelled(saved_figures)
