"""`hil compare`: runs grouped by task x method x board settings, statistics over seeds, ratios within a task.

The run directories here are written as `hil train` writes them (config.json + summary.json) with
chosen figures, so that every statistic can be checked against a hand computation.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from hil.compare import board_settings, compare, table


def _run(root, name, *, task="digits", method="eapu", seed=0, board="emu", metric=0.9, energy=1e-6,
         write_energy=1e-7, **cfg):
    d = root / name
    d.mkdir()
    key = "test_accuracy" if task.startswith("digits") else "test_ssim"
    config = {"task": task, "method": method, "seed": seed, "board": f"{board}?seed={seed}" if board == "emu" else board,
              "epochs": 10, "lr": 0.03, **cfg}
    summary = {"task": task, "method": method, "seed": seed, key: metric, "write_fraction_mean": 0.01,
               "write_fraction_per_weight_mean": 0.02}
    if method != "float":
        summary.update(energy_total_j=energy, write_energy_j=write_energy)
    (d / "config.json").write_text(json.dumps(config))
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def test_groups_over_seeds_have_t_intervals_and_paired_gaps(tmp_path):
    acc_f = [0.95, 0.96, 0.94, 0.97, 0.955]
    acc_e = [0.94, 0.95, 0.945, 0.955, 0.95]
    dirs = []
    for s, (f, e) in enumerate(zip(acc_f, acc_e)):
        dirs.append(_run(tmp_path, f"f{s}", method="float", seed=s, metric=f))
        dirs.append(_run(tmp_path, f"e{s}", method="eapu", seed=s, metric=e, energy=1e-6 * (1 + s)))
        dirs.append(_run(tmp_path, f"b{s}", method="bp", seed=s, metric=0.5, energy=4e-6 * (1 + s),
                         write_energy=3e-7))
    groups, ratios = compare(dirs)
    assert [g.method for g in groups] == ["float", "bp", "eapu"]
    eapu = groups[2]
    half = stats.t.ppf(0.975, 4) * np.std(acc_e, ddof=1) / math.sqrt(5)
    assert eapu.figures["metric"].mean == pytest.approx(np.mean(acc_e))
    assert eapu.figures["metric"].ci95 == pytest.approx(half)
    diffs = np.subtract(acc_e, acc_f)
    assert eapu.gap_to_float.mean == pytest.approx(diffs.mean())
    assert eapu.gap_to_float.ci95 == pytest.approx(stats.t.ppf(0.975, 4) * diffs.std(ddof=1) / math.sqrt(5))
    total = [r for r in ratios if r.quantity == "total training energy" and r.numerator == "bp"]
    assert len(total) == 1 and total[0].ratio == pytest.approx(4.0) and total[0].n == 5
    write = [r for r in ratios if r.quantity == "write energy" and r.numerator == "bp"][0]
    assert write.ratio == pytest.approx(3.0)
    bp = groups[1]
    assert bp.eapu_lead.mean == pytest.approx(np.mean(acc_e) - 0.5) and bp.eapu_lead.n == 5
    assert eapu.eapu_lead is None and groups[0].eapu_lead is None
    assert f"eapu minus bp, test accuracy: {bp.eapu_lead.text('{:+.2f}', 100)} points, paired by seed (5 seeds)" \
        in table(groups, ratios)


def test_ratios_and_gaps_stay_within_a_task_and_board(tmp_path):
    dirs = [
        _run(tmp_path, "d-bp", task="digits", method="bp", energy=8e-6),
        _run(tmp_path, "d-ea", task="digits", method="eapu", energy=1e-6),
        _run(tmp_path, "s-bp", task="denoise", method="bp", energy=2e-6, metric=0.7),
        _run(tmp_path, "s-ea", task="denoise", method="eapu", energy=1e-6, metric=0.8),
        _run(tmp_path, "n-ea", task="digits", method="eapu", board="emu?preset=noisy2x", energy=1.0),
    ]
    groups, ratios = compare(dirs)
    assert {(g.task, g.method, g.board) for g in groups} == {
        ("digits", "bp", "emu"), ("digits", "eapu", "emu"), ("denoise", "bp", "emu"), ("denoise", "eapu", "emu"),
        ("digits", "eapu", "emu?preset=noisy2x")}
    totals = {r.task: r.ratio for r in ratios if r.quantity == "total training energy"}
    assert totals == {"digits @ emu": pytest.approx(8.0), "denoise @ emu": pytest.approx(2.0)}
    assert {g.metric for g in groups if g.task == "denoise"} == {"test_ssim"}
    assert all(g.gap_to_float is None for g in groups)  # no float runs given: no gap invented


def test_energy_ratios_pair_runs_with_the_same_array_settings(tmp_path):
    """A sweep over w_max and k: bp at one setting is divided by eapu at the same setting, never another."""
    dirs = []
    for s in range(3):
        for w_max, k, e_bp, e_ea in ((2.0, 3.0, 9e-6, 3e-6), (0.75, 9.0, 4e-6, 2e-6)):
            dirs.append(_run(tmp_path, f"bp-{w_max}-{s}", method="bp", seed=s, w_max=w_max, delta_g_th_k=k,
                             energy=e_bp))
            dirs.append(_run(tmp_path, f"ea-{w_max}-{s}", method="eapu", seed=s, w_max=w_max, delta_g_th_k=k,
                             energy=e_ea))
    _, ratios = compare(dirs)
    totals = {r.task: (r.ratio, r.n) for r in ratios if r.quantity == "total training energy"}
    assert totals == {"digits @ emu [delta_g_th_k=3.0, w_max=2.0]": (pytest.approx(3.0), 3),
                      "digits @ emu [delta_g_th_k=9.0, w_max=0.75]": (pytest.approx(2.0), 3)}


def test_groups_that_differ_only_in_a_training_setting_are_told_apart_in_the_table(tmp_path):
    """Runs of 10 and 40 epochs are two groups; each row and retention note names its epochs, and a setting
    every group shares is not repeated."""
    dirs = [_run(tmp_path, f"{m}-{e}-{s}", method=m, seed=s, epochs=e, metric=0.9 + e / 1000)
            for m in ("float", "eapu") for e in (10, 40) for s in range(2)]
    groups, ratios = compare(dirs)
    text = table(groups, ratios)
    rows = [line.split("  ")[0].strip() for line in text.splitlines()[2:6]]
    assert rows == ["float [epochs=10]", "float [epochs=40]", "eapu [epochs=10]", "eapu [epochs=40]"]
    assert "lr=" not in text


def test_the_same_seed_twice_in_a_group_is_refused(tmp_path):
    a = _run(tmp_path, "a", seed=3)
    b = _run(tmp_path, "b", seed=3)
    with pytest.raises(ValueError, match="same seed 3"):
        compare([a, b])


def test_board_settings_drop_only_the_seed():
    assert board_settings("emu?seed=4&preset=noisy2x&rows=64") == "emu?preset=noisy2x&rows=64"
    assert board_settings("serial:socket://127.0.0.1:7777") == "serial:socket://127.0.0.1:7777"


def test_compare_cli_json_and_figures_never_overwritten(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    dirs = [str(_run(runs, f"{m}{s}", method=m, seed=s, metric=0.9 + 0.01 * s))
            for m in ("float", "bp", "eapu") for s in range(3)]
    cmd = [sys.executable, "-m", "hil.cli", "compare", *dirs]
    out = subprocess.run([*cmd, "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [g["method"] for g in data["groups"]] == ["float", "bp", "eapu"]
    assert all(g["seeds"] == [0, 1, 2] for g in data["groups"])
    assert (runs / "comparison_digits.png").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr
    assert subprocess.run([*cmd, "--overwrite"], capture_output=True, text=True).returncode == 0


def test_24_runs_of_4_tasks_and_6_methods_each_get_their_group_metric_and_figure(tmp_path):
    """One run per task x method: 24 groups, each task's own metric, energy ratios only within a task,
    one figure per task (the CLI's JSON output and files, as a user reads them)."""
    tasks = ("digits", "digits-small", "denoise", "superres")
    methods = ("float", "bp", "bp-pulses", "eapu", "mixed", "stochastic")
    runs = tmp_path / "runs"
    runs.mkdir()
    dirs = [str(_run(runs, f"{t}-{m}", task=t, method=m, metric=0.5 + 0.01 * i + 0.1 * j,
                     energy=(j + 1) * 1e-6 * (2.0 if m == "bp" else 1.0)))
            for j, t in enumerate(tasks) for i, m in enumerate(methods)]
    out = subprocess.run([sys.executable, "-m", "hil.cli", "compare", *dirs, "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {(g["task"], g["method"]) for g in data["groups"]} == {(t, m) for t in tasks for m in methods}
    for g in data["groups"]:
        assert g["metric"] == ("test_accuracy" if g["task"].startswith("digits") else "test_ssim"), g
        assert len(g["dirs"]) == 1 and g["dirs"][0].endswith(f"{g['task']}-{g['method']}")
    totals = {r["task"]: r["ratio"] for r in data["ratios"]
              if r["quantity"] == "total training energy" and r["numerator"] == "bp"}
    assert totals == {f"{t} @ emu": pytest.approx(2.0) for t in tasks}  # bp vs eapu of the same task only
    for t in tasks:
        assert (runs / f"comparison_{t}.png").is_file(), t
