"""The aggregated table and figures of a sweep, from ``hil compare``'s grouping of its finished runs.

Groups are ``hil compare``'s (runs that differ only in their seed), named by the axis values
their points share (``eapu, delta_g_th_k=1.5``).  Written into the sweep folder:
``comparison.md`` and ``comparison.json`` (the table, mean ± 95 % CI over seeds),
``comparison_TASK.png`` (``hil compare``'s bars) and, for every numeric axis, ``sweep_TASK_AXIS.png``:
the test metric and the writes per weight per step against the axis value, one line per
combination of the other axes.  In tune mode these are of the evaluation points only, and
``tune.json``/``tune.md`` (:mod:`hil.sweep_tune`) hold the candidates and the choice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from calibration.atomic_files import atomic_write_bytes, atomic_write_json
from hil import compare as cmp
from hil.tasks import METRIC_AXES

PER_SEED_AXES = {"seed"}


def _axis_text(name: str, value) -> str:
    return f"{name}={'x'.join(map(str, value)) if isinstance(value, list) else value}"


def name_groups(groups: list[cmp.Group], points: list[dict]) -> dict[int, dict]:
    """Give each group the axis values (but the seed) that all its points share; returns them by group id."""
    by_dir = {str(Path(p["dir"]).resolve()): p for p in points}
    shared_by_group: dict[int, dict] = {}
    for g in groups:
        values = [by_dir[str(Path(d).resolve())]["values"] for d in g.dirs if str(Path(d).resolve()) in by_dir]
        shared = {k: v for k, v in (values[0] if values else {}).items()
                  if k not in PER_SEED_AXES and all(x.get(k) == v for x in values)}
        shared_by_group[id(g)] = shared
        rest = [_axis_text(k, v) for k, v in shared.items() if k != "method"]
        g.name = ", ".join([g.method, *rest])
    return shared_by_group


def axis_scale(axis: str) -> tuple[str, float]:
    """The x-axis label of a swept ``axis`` with its unit, and the factor from the axis value to it.

    The suffix says the unit (docs/DESIGN.md, "Units and indices in names"): ``_s`` siemens, drawn in µS;
    ``_sec`` seconds.
    """
    if axis.endswith("_s"):
        return f"{axis} (µS)", 1e6
    if axis.endswith("_sec"):
        return f"{axis} (s)", 1.0
    return axis, 1.0


def _numeric(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def plot_axes(groups: list[cmp.Group], shared: dict[int, dict], out_dir: Path) -> list[Path]:
    """Per task and numeric axis: metric and writes per weight per step against the axis value."""
    from hil.plots import plt

    out = []
    for task in sorted({g.task for g in groups}):
        tg = [g for g in groups if g.task == task]
        axes = sorted({k for g in tg for k, v in shared[id(g)].items() if _numeric(v)})
        for axis in axes:
            xs_all = {shared[id(g)][axis] for g in tg if axis in shared[id(g)]}
            if len(xs_all) < 2:
                continue
            series: dict[str, list] = {}
            for g in tg:
                if axis not in shared[id(g)]:
                    continue
                rest = ", ".join([g.method] + [_axis_text(k, v) for k, v in shared[id(g)].items()
                                                if k not in (axis, "method")])
                series.setdefault(rest, []).append((shared[id(g)][axis], g))
            metric = next((g.metric for g in tg if g.metric), None)
            scale = METRIC_AXES.get(metric, ("", 1.0))[1]
            x_label, x_scale = axis_scale(axis)
            fig, panels = plt.subplots(1, 2, figsize=(10, 4))
            for label, members in sorted(series.items()):
                members.sort(key=lambda m: m[0])
                for ax, fig_name, sc in ((panels[0], "metric", scale),
                                         (panels[1], "write_fraction_per_weight", 100.0)):
                    pts = [(x, g.figures.get(fig_name)) for x, g in members if g.figures.get(fig_name) is not None]
                    if not pts:
                        continue
                    ax.errorbar([x * x_scale for x, _ in pts], [e.mean * sc for _, e in pts],
                                yerr=[0.0 if math.isnan(e.ci95) else e.ci95 * sc for _, e in pts],
                                marker="o", capsize=3, label=label)
            mname = METRIC_AXES.get(metric, ("metric",))[0]
            panels[0].set(xlabel=x_label, ylabel=mname, title=mname)
            panels[1].set(xlabel=x_label, ylabel="writes per weight per step (%)", title="writes per weight per step")
            writes = [y for line in panels[1].lines for y in line.get_ydata() if y > 0]
            if writes and max(writes) > 30 * min(writes):  # methods decades apart (bp vs eapu): log scale
                panels[1].set_yscale("log")
            for ax in panels:
                if ax.lines:
                    ax.legend(fontsize=8)
            n = max(len(g.seeds) for g in tg)
            fig.suptitle(f"task {task}: mean and 95 % CI over {n} seed{'s' if n != 1 else ''}")
            path = out_dir / f"sweep_{task}_{axis.replace('.', '_')}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            out.append(path)
    return out


def write_report(out_dir: str | Path, sweep: dict) -> tuple[str, list[Path]]:
    """Table (text) and figure paths of the sweep's finished points; also writes them into ``out_dir``."""
    from hil.plots import plot_comparison

    out_dir = Path(out_dir)
    done = [p for p in sweep["points"] if p["state"] == "done"]
    text = ""
    if sweep.get("tune"):  # the comparison is the evaluation's: no tuning seed in it
        from hil.sweep_tune import write_tune

        text = write_tune(out_dir, sweep)
        done = [p for p in done if p.get("phase") == "evaluation"]
    if not done:
        return text or "no point has finished", []
    groups, ratios = cmp.compare([p["dir"] for p in done])
    shared = name_groups(groups, done)
    atomic_write_bytes(out_dir / "comparison.md", cmp.markdown(groups, ratios).encode())
    atomic_write_json(out_dir / "comparison.json", {**cmp.to_json(groups, ratios),
                                                    "axes": [shared[id(g)] for g in groups]})
    paths = plot_comparison(groups, out_dir, overwrite=True) + plot_axes(groups, shared, out_dir)
    return text or cmp.table(groups, ratios), paths


def load_sweep(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / "sweep.json").read_text())
