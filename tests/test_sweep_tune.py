"""``hil sweep`` tune mode: the choice is the best tuning-seed mean, the reported figures come from the
evaluation seeds only, a resumed sweep keeps its choice, and overlapping seed sets are refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.sweep_checks import assert_spec_refused

ray = pytest.importorskip("ray")

SMALL_BOARD = "emu?rows=32&cols=96"
TUNING_SEEDS = [100, 101]
EVALUATION_SEEDS = [0, 1]
CANDIDATES = [0.001, 0.05]  # lr: far apart, so the two candidates' figures differ
SPEC = f"""\
[base]
board = "{SMALL_BOARD}"
task = "digits-small"
epochs = 1

[calibration]
plots = false

[grid]
lr = {CANDIDATES}

[tune]
tuning_seeds = {TUNING_SEEDS}
evaluation_seeds = {EVALUATION_SEEDS}
method = "eapu"
metric = "test_accuracy"
gap_to = "float"
"""


@pytest.fixture(scope="module")
def local_ray():
    """One embedded local Ray for the file: a sweep and its resume both run on it."""
    from hil.sweep_engine import init_ray

    owned = init_ray(None, 2, {})
    yield
    if owned:
        ray.shutdown()


def _run(point_dir: str | Path) -> tuple[dict, dict]:
    d = Path(point_dir)
    return json.loads((d / "config.json").read_text()), json.loads((d / "summary.json").read_text())


def _paired_gaps(points: list[dict], lr: float, seeds: list[int]) -> list[float]:
    """eapu's accuracy minus float's, per seed, read from the run folders (float runs are shared by candidates)."""
    runs = [_run(p["dir"]) for p in points]
    acc = {(c["method"], c["lr"], c["seed"]): s["test_accuracy"] for c, s in runs}
    return [acc[("eapu", lr, s)] - acc[("float", lr, s)] for s in seeds]


def _check_tuning_phase(sweep: dict, tune: dict) -> list[dict]:
    """Phase 1: both candidates on the tuning seeds only, the best chosen; the tuning points."""
    # each candidate runs with float at its lr (float depends on lr)
    tuning = [p for p in sweep["points"] if p["phase"] == "tuning"]
    assert sorted((_run(p["dir"])[0]["method"], _run(p["dir"])[0]["lr"], _run(p["dir"])[0]["seed"])
                  for p in tuning) == sorted((m, lr, s) for m in ("eapu", "float") for lr in CANDIDATES
                                             for s in TUNING_SEEDS)
    # every candidate's objective is the mean paired gap over the tuning seeds, and the chosen one is the best
    means = {}
    for cand in tune["candidates"]:
        lr = cand["values"]["lr"]
        gaps = _paired_gaps(tuning, lr, TUNING_SEEDS)
        means[cand["name"]] = sum(gaps) / len(gaps)
        assert cand["seeds"] == TUNING_SEEDS
        assert cand["objective"]["mean"] == pytest.approx(means[cand["name"]], abs=1e-12)
        assert cand["objective"]["n"] == len(TUNING_SEEDS)
    assert set(means) == {f"lr={lr}" for lr in CANDIDATES}
    chosen = tune["chosen"]["name"]
    assert all(means[chosen] >= m - 1e-12 for m in means.values()), (chosen, means)
    assert sweep["tune"]["chosen"] == tune["chosen"]
    assert tune["tuning_seeds"] == TUNING_SEEDS and tune["evaluation_seeds"] == EVALUATION_SEEDS
    return tuning


def _check_evaluation_phase(out: Path, sweep: dict, tune: dict) -> list[dict]:
    """Phase 2: the chosen candidate (and float) on the evaluation seeds, each its own board, nothing else;
    the evaluation points."""
    evaluation = [p for p in sweep["points"] if p["phase"] == "evaluation"]
    chosen_lr = tune["chosen"]["values"]["lr"]
    assert len(evaluation) == 2 * len(EVALUATION_SEEDS)
    for p in evaluation:
        cfg, summary = _run(p["dir"])
        assert cfg["seed"] in EVALUATION_SEEDS and summary["seed"] == cfg["seed"]
        assert f"seed={cfg['seed']}" in cfg["board"] and cfg["lr"] == chosen_lr
    groups = {g["method"]: g for g in tune["evaluation"]["groups"]}
    assert set(groups) == {"eapu", "float"}
    for g in groups.values():
        assert g["seeds"] == EVALUATION_SEEDS
        assert all(_run(out / d)[0]["seed"] in EVALUATION_SEEDS for d in g["dirs"])
    eapu_acc = [_run(out / d)[1]["test_accuracy"] for d in groups["eapu"]["dirs"]]
    assert groups["eapu"]["figures"]["test_accuracy"]["mean"] == pytest.approx(sum(eapu_acc) / len(eapu_acc))
    assert groups["eapu"]["figures"]["test_accuracy"]["ci95"] is not None  # two seeds: a 95 % interval
    gaps = _paired_gaps(evaluation, chosen_lr, EVALUATION_SEEDS)
    assert tune["evaluation"]["objective"]["mean"] == pytest.approx(sum(gaps) / len(gaps), abs=1e-12)
    comparison = json.loads((out / "comparison.json").read_text())
    assert all(g["seeds"] == EVALUATION_SEEDS for g in comparison["groups"])  # no tuning seed in the table
    return evaluation


def _check_resume_keeps_choice(spec: Path, out: Path, tune: dict, tuning: list[dict],
                               evaluation: list[dict]) -> None:
    """A resumed sweep keeps its recorded choice, even where the tuning runs would now choose otherwise."""
    from hil.sweep_engine import run_sweep
    from hil.sweep_report import load_sweep, write_report
    from hil.sweep_spec import load_spec
    from hil.sweep_tune import choose

    chosen = tune["chosen"]["name"]
    chosen_lr = tune["chosen"]["values"]["lr"]
    other = next(c for c in tune["candidates"] if c["name"] != chosen)
    for name in other["points"]:  # the other candidate's eapu runs now look perfect
        path = out / "runs" / name / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "test_accuracy": 1.0}))
    spec_model, _ = load_spec(spec)
    assert choose(spec_model, [c["values"] for c in tune["candidates"]], tuning)["chosen"]["name"] == other["name"]
    redo = Path(evaluation[0]["dir"])
    shutil.rmtree(redo)
    result = run_sweep(spec, out, resume=True, progress=False)
    assert not result.failed, result.failed
    resumed = load_sweep(out)
    assert resumed["tune"]["chosen"] == tune["chosen"]
    assert resumed["tune"]["candidates"] == tune["candidates"]  # the recorded figures, not recomputed
    assert (redo / "summary.json").is_file() and _run(redo)[0]["lr"] == chosen_lr
    assert all(p["state"] == "done" for p in resumed["points"])
    write_report(out, resumed)
    assert json.loads((out / "tune.json").read_text())["chosen"] == tune["chosen"]


@pytest.mark.timing
@pytest.mark.slow  # whole sweeps on Ray: in the test run, not in the loaded rerun of CI
@pytest.mark.timeout(1200)
def test_tune_chooses_on_tuning_seeds_reports_on_evaluation_seeds_and_keeps_its_choice(tmp_path, local_ray):
    from hil.sweep_engine import run_sweep
    from hil.sweep_report import load_sweep, write_report

    spec = tmp_path / "tune.toml"
    spec.write_text(SPEC)
    out = tmp_path / "sweep"
    result = run_sweep(spec, out, progress=False)
    assert not result.failed, result.failed
    sweep = load_sweep(out)
    text, _ = write_report(out, sweep)
    tune = json.loads((out / "tune.json").read_text())
    assert (out / "tune.md").read_text() == text

    tuning = _check_tuning_phase(sweep, tune)
    evaluation = _check_evaluation_phase(out, sweep, tune)
    _check_resume_keeps_choice(spec, out, tune, tuning, evaluation)


BAD_TUNE_SPECS = {
    "overlapping seeds": ('tuning_seeds = "0-4"\nevaluation_seeds = [3, 4, 5]\n',
                          "tuning_seeds and evaluation_seeds share seeds 3, 4"),
    "seed axis": ('tuning_seeds = [100]\nevaluation_seeds = [0]\n', "'seed' is not a candidate axis"),
    "unknown metric": ('tuning_seeds = [100]\nevaluation_seeds = [0]\nmetric = "accuracy"\n', "unknown metric"),
    "metric of another task": ('tuning_seeds = [100]\nevaluation_seeds = [0]\nmetric = "test_ssim"\n',
                               "report test_accuracy, not test_ssim"),
    "gap without reference": ('tuning_seeds = [100]\nevaluation_seeds = [0]\nobjective = "gap"\n', "needs gap_to"),
    "baseline is the method": ('tuning_seeds = [100]\nevaluation_seeds = [0]\nbaselines = ["eapu"]\n', "baselines"),
}


@pytest.mark.parametrize("case", sorted(BAD_TUNE_SPECS))
def test_bad_tune_specs_end_with_one_line_and_nothing_written(tmp_path, case):
    text, says = BAD_TUNE_SPECS[case]
    grid = '[grid]\nseed = [0, 1]\nlr = [0.1]\n' if case == "seed axis" else '[grid]\nlr = [0.01, 0.1]\n'
    spec = tmp_path / "bad.toml"
    spec.write_text(f'[base]\ntask = "digits-small"\n\n{grid}\n[tune]\n{text}')
    assert_spec_refused(spec, tmp_path / "out", says)


def test_tie_goes_to_the_narrower_interval_then_the_first_listed():
    """The rule on recorded figures: equal means to 12 digits, then the CI, then the order."""
    from hil.sweep_tune import rank_key

    def cand(i, mean, ci):
        return {"index": i, "objective": {"mean": mean, "ci95": ci, "n": 5}}

    tied = [cand(0, 0.9, 0.02), cand(1, 0.9 + 1e-15, 0.01), cand(2, 0.9, 0.01), cand(3, 0.8, 0.0)]
    assert min(tied, key=lambda c: rank_key(c, "max"))["index"] == 1
    assert min(tied, key=lambda c: rank_key(c, "min"))["index"] == 3
    one_seed = [cand(0, 0.5, None), cand(1, 0.5, 0.3)]
    assert min(one_seed, key=lambda c: rank_key(c, "max"))["index"] == 1  # no interval ranks last


def test_float_runs_are_shared_by_candidates_that_differ_only_in_array_settings(tmp_path):
    """float ignores w_max and k: one reference run per seed and lr; the evaluation boards calibrate meanwhile."""
    from hil.sweep_spec import load_spec
    from hil.sweep_tune import tuning_points

    spec = tmp_path / "tune.toml"
    spec.write_text(f'[base]\nboard = "{SMALL_BOARD}"\ntask = "digits-small"\n\n'
                    '[grid]\nlr = [0.02, 0.05]\ndelta_g_th_k = [1.0, 2.0, 3.0]\n\n'
                    '[tune]\ntuning_seeds = [100, 101]\nevaluation_seeds = [0]\ngap_to = "float"\n')
    points, cals, _, candidates, _ = tuning_points(load_spec(spec)[0], tmp_path / "out", str(spec))
    assert len(candidates) == 6
    floats = [p for p in points if p.config["method"] == "float"]
    assert sorted((p.config["lr"], p.config["seed"]) for p in floats) == [
        (lr, s) for lr in (0.02, 0.05) for s in (100, 101)]
    assert sum(p.config["method"] == "eapu" for p in points) == 6 * 2
    assert {p.phase for p in points} == {"tuning"}
    assert sorted(c.params["seed"] for c in cals) == [0, 100, 101]  # seed 0's board: the evaluation's
