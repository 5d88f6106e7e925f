"""Running a sweep's points on Ray (``hil sweep``): local by default, on a cluster when given one.

Without an address, :func:`run_sweep` starts an embedded local Ray (``ray.init`` in this process,
the machine's cores or ``num_cpus``; nothing to start by hand) and stops it at the end.  With one
(``auto``, ``ray://HOST:10001``, ``HOST:6379``) it joins that cluster; the sweep folder must then be
a path every node sees, since each point's run folder is written by the node that runs it.

Each calibration and each point is a Ray task with ``num_cpus=1`` (:mod:`hil.sweep_tasks`); a point on a physical board
also needs one unit of the board's resource (:func:`hil.sweep_boards.board_resource`), which only the
node holding the board has, once: that board's points run there, one at a time.  Emulator points
are spread over the nodes.  Points stream back as they finish; a failed point is recorded with its
error and the others go on.  ``DIR/sweep.json`` (the spec, the points, their states, where and
when each ran) is only ever written by the driver, atomically.

A point runs :func:`hil.demo.ensure_run`, the ``hil train`` code path: a finished run is read
back, an interrupted one resumes from its checkpoint, so ``resume`` re-submits only what has not
finished -- or was made by other code than the driver's (:mod:`hil.stale_runs`): such a point or
calibration is set aside in ``DIR/superseded/`` and made again (one line says how many), unless
``keep_stale``; a tune whose tuning points are made again makes its choice again.

A tune spec (:mod:`hil.sweep_tune`) runs in two batches on the same Ray: the tuning points, then,
after the choice is recorded in ``sweep.json``, the chosen candidate's evaluation points.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from calibration.atomic_files import atomic_write_bytes, atomic_write_json
from hil.stale_runs import Stale, set_aside, stale_calibration, stale_point, summary_line
from hil.sweep_spec import Calibration, Point, SweepSpec, expand, load_spec
from hil.sweep_tasks import (
    SweepError,
    Tracker,
    calibration_task,
    check_resources,
    error_text,
    init_ray,
    point_task,
)
from hil.sweep_tune import (
    TIE_RULE,
    choose,
    evaluation_points,
    no_choice_text,
    tuning_points,
    write_tune,
)
from protocols import provenance
from protocols.unit_names import upgrade_old_names

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
STATES = ("pending", "running", "done", "failed")


@dataclass(frozen=True)
class SweepResult:
    out_dir: Path
    done: list[str]
    failed: dict[str, str]
    run_dirs: list[Path]


# ---------------------------------------------------------------------------------------- the sweep file

def _point_fields(record: dict) -> dict:
    return {k: record[k] for k in ("name", "values", "config", "calibration", "resource", "phase")}


def _record(kind: str, item, path: Path) -> dict:
    return {**asdict(item), "dir": str(path), "state": "pending", "error": None, "node_id": None, "host": None,
            "started_sec": None, "ended_sec": None, "kind": kind}


class SweepFile:
    """``DIR/sweep.json``: the spec, the calibrations and points with their states; written atomically.

    Items found finished (or interrupted) on disk but made by other code are collected in ``stale`` and,
    unless ``keep_stale``, set aside to be made again (``remade``)."""

    def __init__(self, out_dir: Path, data: dict, keep_stale: bool = False):
        self.path = out_dir / SWEEP_FILE
        self.data = data
        self.items = {("calibration", r["name"]): r for r in data["calibrations"]}
        self.items.update({("point", r["name"]): r for r in data["points"]})
        self.keep_stale = keep_stale
        self.stale: list[Stale] = []
        self.remade: dict[tuple[str, str], str] = {}  # set aside to be made again: the code that had made it
        self.finished_found = 0

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

    def update(self, kind: str, name: str, **fields) -> None:
        self.items[(kind, name)].update(fields)

    def add(self, points: list[Point], cals: list[Calibration], devices: dict[str, str],
            previous: dict | None = None) -> None:
        """Write the device files and add the points and calibrations not yet in the sweep, states from
        ``previous`` records and from what is finished on disk."""
        for path, text in devices.items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(Path(path), text.encode())
        out_dir = self.path.parent
        new = [_record("calibration", c, out_dir / "calibrations" / c.name) for c in cals
               if ("calibration", c.name) not in self.items]
        new += [_record("point", p, out_dir / "runs" / p.name) for p in points if ("point", p.name) not in self.items]
        for rec in new:
            old_rec = (previous or {}).get((rec["kind"], rec["name"]))
            if old_rec is not None:
                old_rec = upgrade_old_names(old_rec)  # a sweep started before the rename: started_sec, ended_sec
                rec.update({k: old_rec.get(k) for k in ("state", "error", "node_id", "host", "started_sec", "ended_sec",
                                                         "metric") if k in old_rec})
            finished = Path(rec["dir"]) / ("calibration.json" if rec["kind"] == "calibration" else "summary.json")
            self.finished_found += finished.is_file()
            self._settle_stale(rec)
            if finished.is_file():
                rec["state"] = "done"
            elif rec["state"] != "pending":
                rec.update(state="pending", error=None)
            self.data["calibrations" if rec["kind"] == "calibration" else "points"].append(rec)
            self.items[(rec["kind"], rec["name"])] = rec

    def _settle_stale(self, rec: dict) -> None:
        """Collect ``rec``'s folder if it was made by other code, and set it aside unless ``keep_stale``; a point
        trained on a calibration that is made again is made again too."""
        folder = Path(rec["dir"])
        if rec["kind"] == "calibration":
            stale = stale_calibration(folder)
        else:
            stale = stale_point(folder, self.remade.get(("calibration", rec["calibration"])))
        if stale is None:
            return
        self.stale.append(stale)
        if not self.keep_stale:
            set_aside(stale, self.path.parent)
            self.remade[(rec["kind"], rec["name"])] = stale.recorded
            rec.update(state="pending", error=None, metric=None)

    def stale_line(self) -> str | None:
        """One line on the stale items found so far (None: none), and forget them."""
        if not self.stale:
            return None
        line = summary_line(self.stale, self.finished_found, self.keep_stale, self.path.parent,
                            "points and calibrations")
        self.stale, self.finished_found = [], 0
        return line


def _prepare(spec_path: Path, out_dir: Path, resume: bool, keep_stale: bool = False,
             ) -> tuple[SweepFile, SweepSpec, dict]:
    """The sweep file (states carried over on resume); the spec; tune mode's candidates and resources."""
    spec, raw = load_spec(spec_path)
    where = str(spec_path)
    tune: dict = {}
    if spec.tune is None:
        points, cals, devices = expand(spec, out_dir, where=where)
    else:
        points, cals, devices, tune["candidates"], tune["resources"] = tuning_points(spec, out_dir, where)
    sweep_json = out_dir / SWEEP_FILE
    old: dict = {}
    if resume:
        if not sweep_json.is_file():
            raise SweepError(f"{out_dir} holds no sweep to resume (no {SWEEP_FILE}); run without --resume")
        import json

        old = json.loads(sweep_json.read_text())
        if old.get("spec") != raw:
            raise SweepError(f"{spec_path} is not the spec the sweep in {out_dir} was started with; resume with "
                             "that spec (it is in sweep.json) or choose another --out")
    else:
        if sweep_json.is_file():
            raise SweepError(f"{out_dir} holds a sweep already: continue it with --resume (or choose another --out)")
        if out_dir.exists() and any(out_dir.iterdir()):
            raise SweepError(f"{out_dir} is not empty: choose a new folder for the sweep")
    previous = {(r["kind"], r["name"]): r for r in old.get("calibrations", []) + old.get("points", [])}
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"spec_file": str(spec_path), "spec": raw, "calibrate": spec.sweep.calibrate,
            "source_fingerprint": provenance.source_fingerprint(), "keep_stale": keep_stale,
            "calibrations": [], "points": []}
    if spec.tune is not None:
        # a choice made before an interruption stands: the evaluation continues on it
        data["tune"] = {"options": spec.tune.model_dump(mode="json"), "rule": TIE_RULE, "candidates": None,
                        "chosen": None, **{k: v for k, v in (old.get("tune") or {}).items() if k != "options"}}
    sweep = SweepFile(out_dir, data, keep_stale)
    sweep.add(points, cals, devices, previous)
    if spec.tune is not None and data["tune"]["chosen"] is not None and any(
            sweep.items[key].get("phase") == "tuning" for key in sweep.remade):
        data["tune"]["chosen"] = None  # made from figures of other code: made again once they are remade
    if spec.tune is not None and data["tune"]["chosen"] is not None:
        sweep.add(*evaluation_points(spec, data["tune"]["chosen"]["values"], out_dir, where), previous)
    sweep.save()
    return sweep, spec, tune


# ---------------------------------------------------------------------------------------- the driver

def run_sweep(spec_path: str | Path, out_dir: str | Path, *, address: str | None = None, resume: bool = False,
              num_cpus: int | None = None, limits=None, progress: bool = True,
              echo: Callable[[str], None] | None = None, keep_stale: bool = False) -> SweepResult:
    """Run (or resume) the sweep of ``spec_path`` in ``out_dir``; raises SpecError/SweepError for bad input.
    ``keep_stale``: keep points and calibrations made by other code (:mod:`hil.stale_runs`)."""
    spec_path, out_dir = Path(spec_path), Path(out_dir).resolve()
    if num_cpus is not None and address:
        raise SweepError("--num-cpus sizes the embedded local Ray; a cluster (--address) has its own CPUs")
    sweep, spec, tune = _prepare(spec_path, out_dir, resume, keep_stale)
    _say_stale(sweep, echo)
    if spec.tune is None:
        batches = iter([(sweep.data["points"], sweep.data["calibrations"])])
        needed = {r["resource"] for r in sweep.data["points"] + sweep.data["calibrations"]
                  if r["resource"] and r["state"] != "done"}
    else:  # the resources of the evaluation of any candidate, too
        batches = _tune_phases(sweep, spec, tune["candidates"], out_dir, str(spec_path), echo)
        needed = tune["resources"]
    _execute(sweep, batches, needed, address, num_cpus, limits, progress, echo)
    records = sweep.data["points"]
    return SweepResult(out_dir, [r["name"] for r in records if r["state"] == "done"],
                       {r["name"]: r["error"] for r in records if r["state"] == "failed"},
                       [Path(r["dir"]) for r in records if r["state"] == "done"])


def _tune_phases(sweep: SweepFile, spec: SweepSpec, candidates: list[dict], out_dir: Path, where: str, echo):
    """Tune mode's two batches: the tuning points; then, once they have all finished, the choice
    (recorded before anything else runs) and the chosen candidate's evaluation points."""
    tuning = [r for r in sweep.data["points"] if r["phase"] == "tuning"]
    yield tuning, sweep.data["calibrations"]
    if any(r["state"] != "done" for r in tuning):
        return  # no choice on a part of the candidates: --resume runs the rest first
    record = sweep.data["tune"]
    if record["chosen"] is None:
        record.update(choose(spec, candidates, tuning), chosen_sec=time.time())
        sweep.save()
        write_tune(out_dir, sweep.data)
        if record["chosen"] is None:
            raise SweepError(no_choice_text(spec.tune, record))
        if echo is not None:
            echo(f"tune: chose {record['chosen']['name']} on seeds {spec.tune.tuning_seeds}; evaluating it on "
                 f"seeds {spec.tune.evaluation_seeds}")
    sweep.add(*evaluation_points(spec, record["chosen"]["values"], out_dir, where))
    _say_stale(sweep, echo)
    sweep.save()
    yield ([r for r in sweep.data["points"] if r["phase"] == "evaluation"], sweep.data["calibrations"])


def _say_stale(sweep: SweepFile, echo) -> None:
    line = sweep.stale_line()
    if line is not None:
        (echo or log.info)(line)


def _say(bar, echo, text: str) -> None:
    if bar is not None and not bar.disable:
        bar.write(text, file=sys.stderr)
    elif echo is not None:
        echo(text)


def _execute(sweep: SweepFile, batches, needed: set[str], address, num_cpus, limits, progress,
             echo) -> None:
    """Run the batches of point records one after the other, what of each has not finished; Ray is started
    (or joined) for the first batch with something to do and stopped (if started here) at the end."""
    import ray

    owned = started = False
    tracker = None
    try:
        for points, cals in batches:
            todo = [r for r in points if r["state"] != "done"]
            if not todo:
                continue
            if not started:
                owned, started = init_ray(address, num_cpus, {r: 1.0 for r in needed}), True
                if address or not owned:
                    check_resources(needed)
                sweep.data["ray"] = {"address": address, "nodes": len(ray.nodes()),
                                     "cpus": ray.cluster_resources().get("CPU")}
                tracker = ray.remote(num_cpus=0)(Tracker).remote()
            todo_cals = [r for r in cals if r["state"] != "done"]
            _run_batch(sweep, todo, todo_cals, tracker, limits, progress, echo)
    finally:
        if owned:
            ray.shutdown()


def _task_options(resource: str | None) -> dict:
    if resource:  # the node holding the board; one at a time
        return {"num_cpus": 1, "resources": {resource: 1}, "max_retries": 0}
    return {"num_cpus": 1, "scheduling_strategy": "SPREAD", "max_retries": 0}


def _submission_order(todo: list[dict], todo_cals: list[dict]) -> tuple[list[dict], list[dict]]:
    """The points to submit at once (long ones first) and the ones to hold back until fewer tasks can
    run than there are CPUs (:func:`_run_batch`); nothing is held in a batch without calibrations.

    Ray starts ready tasks roughly in submission order, so a long task started last leaves the other
    cores idle at the end.  Writing to the array is what makes a point long: the points that need a
    calibration (and the calibrations) go first; the points that need none (``float``) are ready at
    once and would take the cores while the calibrations finish, so they are held back and fill the end.
    """
    def cost(point: dict) -> tuple:  # a whole TrainConfig; sorting is stable: equals keep the spec's order
        return (point["config"]["method"] != "float", point["config"]["epochs"])

    ordered = sorted(todo, key=cost, reverse=True)
    if not todo_cals:
        return ordered, []
    return ([p for p in ordered if p["calibration"] is not None or p["resource"]],
            [p for p in ordered if p["calibration"] is None and not p["resource"]])


def _submit_points(points: list[dict], cal_refs: dict, tracker, limits, pending: dict,
                   keep_stale: bool = False) -> None:
    """Submit ``points`` (each after its calibration, as a Ray dependency) into ``pending``."""
    import ray

    pt_task = ray.remote(point_task)
    for p in points:
        # --keep-stale: a point interrupted under other code continues under this code (recorded in its run)
        args = [{**_point_fields(p), "allow_code_change": keep_stale}, p["dir"], limits, tracker]
        if p["calibration"] in cal_refs:
            args.append(cal_refs[p["calibration"]])  # a Ray dependency: runs once the calibration is done
        ref = pt_task.options(**_task_options(p["resource"])).remote(*args)
        pending[ref] = ("point", p["name"])


def _submit_batch(todo: list[dict], todo_cals: list[dict], tracker, limits,
                  keep_stale: bool = False) -> tuple[dict, list[dict]]:
    """Submit the calibrations, then the points that go first (:func:`_submission_order`);
    ``{ref: (kind, name)}`` and the points held back."""
    import ray

    cal_task = ray.remote(calibration_task)
    pending: dict = {}
    cal_refs = {}
    for c in todo_cals:
        ref = cal_task.options(**_task_options(c["resource"])).remote(
            {"name": c["name"], "board": c["board"], "params": c["params"]}, c["dir"], limits, tracker)
        cal_refs[c["name"]] = ref
        pending[ref] = ("calibration", c["name"])
    first, held = _submission_order(todo, todo_cals)
    _submit_points(first, cal_refs, tracker, limits, pending, keep_stale)
    return pending, held


def _mark_started(sweep: SweepFile, tracker) -> bool:
    """Record the items the tracker saw start; whether any was."""
    import ray

    changed = False
    for kind, name, node, host, t in ray.get(tracker.drain.remote()):
        if sweep.items[(kind, name)]["state"] == "pending":
            sweep.update(kind, name, state="running", node_id=node, host=host, started_sec=t)
            changed = True
    return changed


def _record_result(sweep: SweepFile, kind: str, name: str, ref) -> tuple[str, dict]:
    """Record a finished task's result (or the failure of its worker); its state and record."""
    import ray

    try:
        rec = ray.get(ref)
    except Exception as exc:  # a worker or node died under the task
        rec = {"error": error_text(getattr(exc, "cause", None) or exc), "ended_sec": time.time()}
    state = "failed" if rec.get("error") else "done"
    sweep.update(kind, name, state=state, **rec)
    return state, rec


def _runnable(sweep: SweepFile, pending: dict) -> int:
    """How many pending tasks could run now: the calibrations, and the points whose calibration is done;
    the tasks on one physical board count once (they run there one at a time)."""
    cals = {name for kind, name in pending.values() if kind == "calibration"}
    boards, free = set(), 0
    for kind, name in pending.values():
        item = sweep.items[(kind, name)]
        if kind == "point" and item["calibration"] in cals:
            continue
        if item["resource"]:
            boards.add(item["resource"])
        else:
            free += 1
    return free + len(boards)


def _run_batch(sweep: SweepFile, todo: list[dict], todo_cals: list[dict], tracker, limits, progress, echo) -> None:
    import ray
    from tqdm import tqdm

    pending, held = _submit_batch(todo, todo_cals, tracker, limits, sweep.keep_stale)
    cpus = ray.cluster_resources().get("CPU", 1)
    sweep.save()
    bar = tqdm(total=len(todo), unit="point", desc="sweep", disable=None if progress else True,
               file=sys.stderr, dynamic_ncols=True)
    done = failed = 0
    try:
        while pending or held:
            if held and _runnable(sweep, pending) < cpus:
                _submit_points(held, {}, tracker, limits, pending, sweep.keep_stale)
                held = []
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            changed = _mark_started(sweep, tracker)
            for ref in ready:
                kind, name = pending.pop(ref)
                state, rec = _record_result(sweep, kind, name, ref)
                changed = True
                if kind == "point":
                    done += state == "done"
                    failed += state == "failed"
                    bar.update(1)
                    bar.set_postfix(done=done, failed=failed)
                    detail = (rec["error"] if state == "failed"
                              else ", ".join(f"{k} {v:.4f}" for k, v in (rec.get("metric") or {}).items()))
                    _say(bar, echo, f"{name}: {state}{': ' + detail if detail else ''}")
                elif state == "failed":
                    _say(bar, echo, f"calibration {name}: failed: {rec['error']}")
            if changed:
                sweep.save()
    finally:
        bar.close()
        if pending:  # interrupted: what was running starts again (from its checkpoint) on --resume
            for kind, name in pending.values():
                if sweep.items[(kind, name)]["state"] == "running":
                    sweep.update(kind, name, state="pending")
            sweep.save()


def sweep_records(out_dir: str | Path) -> dict:
    import json

    return json.loads((Path(out_dir) / SWEEP_FILE).read_text())

