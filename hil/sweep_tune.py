"""Tune mode of ``hil sweep``: choose training settings on tuning seeds, report them on evaluation seeds.

A spec with a ``[tune]`` table (:class:`hil.sweep_spec.TuneOptions`) runs in two phases, each of
ordinary sweep points:

1. *tuning*: every candidate (a [grid]/[zip] combination) with ``method`` on every tuning seed, and,
   with ``gap_to``, the reference's run of each seed (``float`` ignores the array-only settings, so
   candidates that differ only in those share one reference run per seed);
2. *evaluation*: the chosen candidate with ``method``, ``gap_to`` and the ``baselines`` on the
   evaluation seeds, which share no seed with the tuning seeds.

The choice (:data:`TIE_RULE`) is made once every tuning point has finished, from ``hil compare``'s
figures of the tuning runs, and recorded in ``sweep.json`` and ``tune.json`` before the evaluation
starts; a resumed sweep keeps the recorded choice.  ``tune.json`` holds every candidate's
tuning-seed figures (mean ± 95 % CI), the choice and the evaluation-seed figures; ``tune.md`` the
same as tables; its run folders are named relative to the sweep folder (``runs/POINT``).
"""

from __future__ import annotations

import math
import operator
import os
from pathlib import Path

from calibration.atomic_files import atomic_write_bytes, atomic_write_json
from hil import compare as cmp
from hil.sweep_spec import (
    TEST_METRICS,
    Calibration,
    Point,
    SpecError,
    SweepSpec,
    TuneOptions,
    check_settings,
    combinations,
    expand_rows,
    point_name,
)

TUNE_JSON = "tune.json"
TUNE_MD = "tune.md"
TIE_RULE = ("the best tuning-seed mean of the objective among the candidates that meet the bounds; means "
            "equal to 12 significant digits go to the narrower 95 % CI, then to the candidate listed first")
# tune mode sets these per phase; a spec may not
_SET_BY_TUNE = ("seed", "method")


# ---------------------------------------------------------------------------------------- the points

def task_metric(task: str) -> str:
    """The test metric a task's runs report (``hil train``'s summary): accuracy for digits, SSIM for images."""
    return "test_accuracy" if task.startswith("digits") else "test_ssim"


def check_tune(spec: SweepSpec, where: str) -> None:
    """What the tune model cannot check alone: the axes are candidates, the metric is the task's."""
    from hil.train import TrainConfig
    from hil.training.config import METHODS

    t = spec.tune
    for table in ("base", "grid", "zip"):
        for name in (*_SET_BY_TUNE, "task"):
            if name in getattr(spec, table) and not (table == "base" and name == "task"):
                raise SpecError(f"{where} [{table}]: {name!r} is not a candidate axis in tune mode; seeds and "
                                "methods are set by [tune] (tuning_seeds, evaluation_seeds, method, gap_to, "
                                "baselines), the task by [base]")
    if not spec.grid and not spec.zip:
        raise SpecError(f"{where}: [tune] chooses among the [grid]/[zip] combinations; give at least one axis")
    for method in (t.method, t.gap_to, *t.baselines):
        if method is not None and method not in METHODS:
            raise SpecError(f"{where} [tune]: unknown method {method!r}; one of {', '.join(METHODS)}")
    metric = task_metric(str(spec.base.get("task", TrainConfig.model_fields["task"].default)))
    for name in (t.metric, *t.at_most, *t.at_least):
        if name in TEST_METRICS and name != metric:
            raise SpecError(f"{where} [tune]: the task's runs report {metric}, not {name}")


def candidates(spec: SweepSpec, where: str) -> list[dict]:
    return combinations(spec, where)


def _reference_values(t: TuneOptions, method: str, values: dict) -> dict:
    if method != "float":
        return values
    return {k: v for k, v in values.items() if k not in cmp.METHOD_ONLY_SETTINGS}


def tuning_rows(t: TuneOptions, candidate: dict) -> list[dict]:
    """The tuning points of one candidate: its method's runs first, then the reference's."""
    methods = [t.method] + ([t.gap_to] if t.gap_to else [])
    return [{"seed": s, "method": m, **_reference_values(t, m, candidate)} for m in methods for s in t.tuning_seeds]


def evaluation_rows(t: TuneOptions, candidate: dict) -> list[dict]:
    methods = [t.method] + ([t.gap_to] if t.gap_to else []) + list(t.baselines)
    return [{"seed": s, "method": m, **_reference_values(t, m, candidate)} for s in t.evaluation_seeds for m in methods]


def tuning_points(spec: SweepSpec, out_dir: Path, where: str
                  ) -> tuple[list[Point], list[Calibration], dict, list[dict], set[str]]:
    """Phase 1's points, calibrations and device files; the candidates; the Ray resources of both phases.

    The evaluation of every candidate is expanded too, so a spec that could not run its evaluation
    fails now, not after the tuning.  The calibrations the evaluation needs whichever candidate is
    chosen (the candidates do not change the boards) are among phase 1's, to be made meanwhile.
    """
    check_settings(spec, where)
    check_tune(spec, where)
    t = spec.tune
    cands = candidates(spec, where)
    rows: dict[str, dict] = {}
    for c in cands:
        for row in tuning_rows(t, c):
            rows.setdefault(point_name(row), row)
    points, cals, devices = expand_rows(spec, list(rows.values()), out_dir, where, phase="tuning")
    resources = {r for r in [*(p.resource for p in points), *(c.resource for c in cals)] if r}
    common: dict[str, Calibration] | None = None
    for c in cands:
        more, more_cals, _ = expand_rows(spec, evaluation_rows(t, c), out_dir, where, phase="evaluation")
        resources |= {r for r in [*(p.resource for p in more), *(c.resource for c in more_cals)] if r}
        these = {cal.name: cal for cal in more_cals}
        common = these if common is None else {k: v for k, v in common.items() if these.get(k) == v}
    known = {cal.name for cal in cals}
    cals += [cal for name, cal in (common or {}).items() if name not in known]
    return points, cals, devices, cands, resources


def evaluation_points(spec: SweepSpec, chosen: dict, out_dir: Path, where: str
                      ) -> tuple[list[Point], list[Calibration], dict]:
    return expand_rows(spec, evaluation_rows(spec.tune, chosen), out_dir, where, phase="evaluation")


# ---------------------------------------------------------------------------------------- the choice

def _figure(g: cmp.Group, name: str) -> cmp.Estimate | None:
    return g.figures.get("metric") if name in TEST_METRICS else g.figures.get(name)


def _objective(t: TuneOptions, g: cmp.Group) -> cmp.Estimate | None:
    return g.gap_to_float if t.by_gap else _figure(g, t.metric)


def _figures_json(g: cmp.Group, t: TuneOptions) -> dict:
    figures = {(g.metric if k == "metric" else k): cmp.estimate_json(v) for k, v in g.figures.items()}
    if t.gap_to:
        figures[f"gap_to_{t.gap_to}"] = cmp.estimate_json(g.gap_to_float)
    return figures


def _method_group(groups: list[cmp.Group], method: str, dirs: list[str]) -> cmp.Group:
    found = [g for g in groups if g.method == method]
    if len(found) != 1:
        raise ValueError(f"the runs {dirs} make {len(found)} groups of {method}, not one")
    return found[0]


def choose(spec: SweepSpec, cands: list[dict], points: list[dict]) -> dict:
    """Every candidate's tuning-seed figures and the chosen one (``None`` when no candidate meets the bounds).

    ``points``: the sweep's point records (``name``, ``dir``); every tuning point must have finished.
    """
    t = spec.tune
    by_name = {p["name"]: p for p in points}
    records = []
    for index, c in enumerate(cands):
        dirs = [by_name[point_name(row)]["dir"] for row in tuning_rows(t, c)]
        groups, _ = cmp.compare(dirs)
        g = _method_group(groups, t.method, dirs)
        objective = _objective(t, g)
        bounds = {}
        for kind, table, holds in (("at_most", t.at_most, operator.le), ("at_least", t.at_least, operator.ge)):
            for name, limit in table.items():
                est = _figure(g, name)
                bounds[f"{name} {kind}"] = {"mean": None if est is None else est.mean, "bound": limit,
                                            "met": est is not None and holds(est.mean, limit)}
        name_of = {str(Path(by_name[point_name(row)]["dir"])): point_name(row) for row in tuning_rows(t, c)}
        records.append({"index": index, "name": point_name(c), "values": c, "seeds": g.seeds,
                        "points": [name_of[str(Path(d))] for d in g.dirs],
                        "objective": cmp.estimate_json(objective), "figures": _figures_json(g, t),
                        "bounds": bounds, "meets_bounds": all(b["met"] for b in bounds.values())})
    eligible = [r for r in records if r["meets_bounds"] and r["objective"] is not None]
    best = min(eligible, key=lambda r: rank_key(r, t.goal)) if eligible else None
    return {"candidates": records,
            "chosen": None if best is None else {"name": best["name"], "values": best["values"]}}


def rank_key(record: dict, goal: str) -> tuple:
    """:data:`TIE_RULE` as a sort key (smallest first) of a candidate record with its objective and index."""
    o = record["objective"]
    mean = float(f"{o['mean']:.12g}")
    return (-mean if goal == "max" else mean, math.inf if o["ci95"] is None else o["ci95"], record["index"])


def objective_text(t: TuneOptions) -> str:
    what = (f"{t.method}'s {t.metric} gap to {t.gap_to} (paired by seed)" if t.by_gap
            else f"{t.method}'s {t.metric}")
    bounds = [f"{n} <= {v:g}" for n, v in t.at_most.items()] + [f"{n} >= {v:g}" for n, v in t.at_least.items()]
    return (f"{'maximise' if t.goal == 'max' else 'minimise'} the tuning-seed mean of {what}"
            + (f", subject to the tuning-seed means {', '.join(bounds)}" if bounds else ""))


def no_choice_text(t: TuneOptions, record: dict) -> str:
    """One line: why no candidate was chosen, with the nearest ones."""
    def missed(r: dict) -> str:
        return "; ".join(f"{k} {b['mean']:.4g}" for k, b in r["bounds"].items() if not b["met"])

    near = ", ".join(f"{r['name']} ({missed(r)})" for r in record["candidates"][:3])
    return (f"no candidate meets the bounds on the tuning seeds ({objective_text(t)}): {near}"
            f"{', ...' if len(record['candidates']) > 3 else ''}; relax [tune] at_most/at_least or add candidates")


# ---------------------------------------------------------------------------------------- the report

def _scale(name: str) -> tuple[float, str]:
    if name == "test_accuracy":
        return 100.0, "{:.2f}"
    if name.startswith("write_fraction"):
        return 1.0, "{:.3%}"
    if name == "test_ssim":
        return 1.0, "{:.4f}"
    return 1.0, "{:.3g}"


def _text(est: dict | None, name: str, signed: bool = False) -> str:
    if est is None:
        return "-"
    scale, fmt = _scale(name)
    if signed:
        fmt = fmt.replace("{:", "{:+")
    return cmp.Estimate(est["mean"], math.nan if est["ci95"] is None else est["ci95"], est["n"]).text(fmt, scale)


def evaluation(sweep: dict) -> tuple[list[cmp.Group], list[cmp.Ratio]]:
    """``hil compare``'s groups of the finished evaluation points (named by their axis values)."""
    from hil.sweep_report import name_groups

    done = [p for p in sweep["points"] if p.get("phase") == "evaluation" and p["state"] == "done"]
    if not done:
        return [], []
    groups, ratios = cmp.compare([p["dir"] for p in done])
    name_groups(groups, done)
    return groups, ratios


def write_tune(out_dir: str | Path, sweep: dict) -> str:
    """Write ``tune.json`` and ``tune.md`` from the sweep's record and its evaluation runs; returns the Markdown."""
    out_dir = Path(out_dir)
    t = TuneOptions(**sweep["tune"]["options"])
    record = sweep["tune"]
    metric = t.metric
    groups, ratios = evaluation(sweep)
    tuned = next((g for g in groups if g.method == t.method), None)
    data = {
        "spec_file": sweep.get("spec_file"), "objective": objective_text(t), "rule": TIE_RULE,
        "options": record["options"], "tuning_seeds": t.tuning_seeds, "evaluation_seeds": t.evaluation_seeds,
        "candidates": record.get("candidates"), "chosen": record.get("chosen"),
        "evaluation": None if not groups else {
            "objective": None if tuned is None else cmp.estimate_json(_objective(t, tuned)),
            "groups": [{"name": g.name, "method": g.method, "seeds": g.seeds,
                        "dirs": [os.path.relpath(d, out_dir) for d in g.dirs],
                        "figures": _figures_json(g, t) if g.method != "float" else
                        {g.metric: cmp.estimate_json(g.figures.get("metric"))}} for g in groups],
            "ratios": cmp.to_json([], ratios)["ratios"]},
    }
    atomic_write_json(out_dir / TUNE_JSON, data)

    gap_name = f"gap_to_{t.gap_to}" if t.gap_to else None
    head = ["candidate", "seeds", "objective", "test metric"]
    head += [f"gap to {t.gap_to}"] if gap_name else []
    head += ["writes/weight/step", "bounds met"]
    lines = [f"### Tuning: {sweep.get('spec_file', '')}", "",
             f"Objective: {objective_text(t)}; tuning seeds {_seeds(t.tuning_seeds)}.  Choice: {TIE_RULE}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    chosen = (record.get("chosen") or {}).get("name")
    test_metric = metric if metric in TEST_METRICS else next(
        (k for r in record.get("candidates") or [] for k in TEST_METRICS if k in r["figures"]), "test_accuracy")
    objective_name = test_metric if t.by_gap else metric
    for r in record.get("candidates") or []:
        f = r["figures"]
        cells = [f"**{r['name']}** (chosen)" if r["name"] == chosen else r["name"], str(len(r["seeds"])),
                 _text(r["objective"], objective_name, signed=t.by_gap), _text(f.get(test_metric), test_metric)]
        cells += [_text(f.get(gap_name), test_metric, signed=True)] if gap_name else []
        cells += [_text(f.get("write_fraction_per_weight"), "write_fraction_per_weight"),
                  "yes" if r["meets_bounds"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    if not record.get("candidates"):
        lines.append("| (not chosen yet: the tuning points have not all finished) |" + " |" * (len(head) - 1))
    lines.append("")
    if chosen:
        lines += [f"### Evaluation of {chosen} on evaluation seeds {_seeds(t.evaluation_seeds)}", ""]
        if groups:
            lines += [cmp.markdown(groups, ratios)]
            if tuned is not None:
                on_eval = _text(data["evaluation"]["objective"], objective_name, signed=t.by_gap)
                lines += [f"Objective on the evaluation seeds: {on_eval}", ""]
        else:
            lines += ["(no evaluation point has finished yet)", ""]
    text = "\n".join(lines).rstrip() + "\n"
    atomic_write_bytes(out_dir / TUNE_MD, text.encode())
    return text


def _seeds(seeds: list[int]) -> str:
    s = sorted(seeds)
    return f"{s[0]}–{s[-1]}" if s == list(range(s[0], s[-1] + 1)) and len(s) > 2 else ", ".join(map(str, s))
