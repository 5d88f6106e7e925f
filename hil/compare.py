"""Finished runs grouped by task x method x board settings, with statistics over seeds (``hil compare``).

A *group* is every run that differs only in its seed: same task, method, board
settings (the board address with its ``seed`` option removed, so that each seed may
have its own emulated board) and training settings.  Per group the figures are the
mean over seeds with a 95 % confidence interval (Student's t).  Gaps to ``float`` are
paired by seed (the same seed's float run on the same task and settings), and so is each
baseline's distance to ``eapu`` (eapu's metric minus the baseline's, between runs that differ
only in the method: :attr:`Group.eapu_lead`, a note under the table); ratios
between methods are formed within a task only, per seed, and summarised by their
geometric mean with a t-interval on the log ratios.  Every ratio says what it is a
ratio of.  Runs made by more than one state of the code (their ``source_fingerprint``, and
the code of any checkpoint a run was resumed from under other code) are named in one line
under the tables (:func:`code_versions_note`), and in the JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import numpy as np
from scipy import stats as _st

from hil.tasks import METRIC_AXES
from protocols import provenance
from protocols.unit_names import upgrade_old_names

# training settings that are the seed's or the method's own, not the group's
_PER_SEED = {"seed", "board", "calibration", "allow_foreign_calibration", "task", "software_version",
             "source_fingerprint"}
# settings the digital reference ignores (it has no array): a float run pairs with array runs that differ in them
METHOD_ONLY_SETTINGS = {"method", "delta_g_th_k", "max_pulses", "w_max", "host_step_sec", "checkpoint_every"}
METRICS = tuple(METRIC_AXES)


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds with the half width of its 95 % confidence interval (nan for one seed)."""

    mean: float
    ci95: float
    n: int

    @classmethod
    def of(cls, values) -> "Estimate | None":
        v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
        if v.size == 0:
            return None
        if v.size == 1:
            return cls(float(v[0]), math.nan, 1)
        half = float(_st.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
        return cls(float(v.mean()), half, int(v.size))

    def text(self, fmt: str = "{:.4f}", scale: float = 1.0) -> str:
        m = fmt.format(self.mean * scale)
        return m if math.isnan(self.ci95) else f"{m} ± {fmt.replace('+', '').format(self.ci95 * scale)}"


@dataclass(frozen=True)
class Ratio:
    """Geometric mean over paired seeds of ``numerator / denominator`` for one quantity, with a 95 % CI."""

    task: str
    quantity: str
    numerator: str
    denominator: str
    ratio: float
    ci95_low: float
    ci95_high: float
    n: int

    def text(self) -> str:
        ci = "" if math.isnan(self.ci95_low) else f" (95 % CI {self.ci95_low:.3g}-{self.ci95_high:.3g})"
        anchor = (" (published EaPU figure, training energy vs BP-based memristor training: 50.54x)"
                  if self.quantity == "total training energy" and self.numerator == "bp" else "")
        return (f"{self.task}: {self.quantity} {self.numerator}/{self.denominator} = {self.ratio:.3g}x{ci}, "
                f"{self.n} seed{'s' if self.n != 1 else ''}{anchor}")


@dataclass
class Group:
    task: str
    method: str
    board: str
    settings: dict[str, Any]
    metric: str | None
    seeds: list[int] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    figures: dict[str, Estimate | None] = field(default_factory=dict)
    gap_to_float: Estimate | None = None
    name: str | None = None  # a caller's label (a sweep names groups by their axis values)
    eapu_lead: Estimate | None = None  # eapu's metric minus this group's, paired by seed (baselines only)
    source_fingerprints: list[str] = field(default_factory=list)  # per run in ``dirs``: the code(s) that made it

    def label(self, with_board: bool) -> str:
        if self.name:
            return self.name
        return f"{self.method} @ {self.board}" if with_board and self.board else self.method


def _differing(mine: dict, siblings: list[dict]) -> str:
    """`` [name=value, ...]`` for the settings of ``mine`` that some sibling has otherwise ("" when none do)."""
    differ = [n for n in mine if any(other.get(n) != mine[n] for other in siblings)]
    return f" [{', '.join(f'{n}={mine[n]}' for n in differ)}]" if differ else ""


def group_labels(groups: list[Group]) -> list[str]:
    """Each group's label, plus ``[name=value, ...]`` for the settings that tell it apart from the groups of
    the same task, method and board (a sweep over epochs or lr otherwise prints two rows of one name)."""
    with_board = len({g.board for g in groups}) > 1
    out = []
    for g in groups:
        label = g.label(with_board)
        siblings = [o.settings for o in groups if (o.task, o.method, o.board) == (g.task, g.method, g.board)]
        out.append(label if g.name else label + _differing(g.settings, siblings))
    return out


@dataclass(frozen=True)
class Run:
    summary: dict
    config: dict
    path: str

    @property
    def seed(self) -> int:
        return int(self.summary.get("seed", self.config.get("seed", 0)))

    @property
    def source(self) -> str:
        """The code that made the run: its fingerprint, ``unknown``, or ``old>new`` when resumed under other code."""
        codes = [*self.summary.get("earlier_source_fingerprints", []), self.summary.get("source_fingerprint")]
        return ">".join(provenance.shown(c) for c in codes)


def load_runs(run_dirs: list[str | Path]) -> list[Run]:
    """Summaries (and configurations) of finished run directories; a clear error for anything else."""
    runs = []
    for d in run_dirs:
        d = Path(d)
        path = d / "summary.json"
        if not path.is_file():
            raise ValueError(f"{d} holds no summary.json: give finished run directories (hil train --out DIR)")
        try:
            summary = json.loads(path.read_text())
            cfg_path = d / "config.json"
            config = upgrade_old_names(json.loads(cfg_path.read_text())) if cfg_path.is_file() else {}
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read the run in {d}: {exc}") from None
        if "method" not in summary or "task" not in summary:
            raise ValueError(f"{path} is not a training summary (no method or task): give run directories")
        runs.append(Run(summary, config, str(d)))
    if not runs:
        raise ValueError("no run directories given")
    return runs


def board_settings(address: str | None) -> str:
    """The board address without its ``seed`` option: runs on seeded emulators of one kind group together."""
    if not address:
        return ""
    head, _, query = address.partition("?")
    params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "seed"]
    return head + ("?" + urlencode(sorted(params)) if params else "")


def board_label(settings: str) -> str:
    """:func:`board_settings` for people: options unquoted, a device file named by its file name only."""
    head, _, query = settings.partition("?")
    params = [(k, Path(v).name if k == "config" else v) for k, v in parse_qsl(query, keep_blank_values=True)]
    return head + ("?" + "&".join(f"{k}={v}" for k, v in params) if params else "")


def _settings(run: Run, method_only: bool) -> dict[str, Any]:
    drop = _PER_SEED | (METHOD_ONLY_SETTINGS if not method_only else {"method"})
    return {k: v for k, v in sorted(run.config.items()) if k not in drop}


def _metric(summary: dict) -> str | None:
    return next((m for m in METRICS if summary.get(m) is not None), None)


FIGURES: dict[str, Any] = {
    "metric": None,  # filled per group
    "write_fraction_per_weight": lambda s: s.get("write_fraction_per_weight_mean"),
    "write_fraction_per_device": lambda s: s.get("write_fraction_mean"),
    "energy_total_j": lambda s: s.get("energy_total_j"),
    "write_energy_j": lambda s: s.get("write_energy_j"),
    "board_time_s": lambda s: s.get("board_time_s"),
    "pulses_total": lambda s: s.get("pulses_total"),
}


def group_runs(runs: list[Run]) -> list[Group]:
    """Groups in a stable order (task, then float, bp, bp-pulses, eapu, others), with their statistics."""
    groups: dict[str, Group] = {}
    members: dict[str, list[Run]] = {}
    for run in runs:
        s = run.summary
        board = board_settings(run.config.get("board", s.get("board")))
        settings = _settings(run, method_only=True)
        key = json.dumps([s["task"], s["method"], board, settings], sort_keys=True, default=str)
        if key not in groups:
            groups[key] = Group(s["task"], s["method"], board, settings, _metric(s))
            members[key] = []
        seeds = [r.seed for r in members[key]]
        if run.seed in seeds:
            other = members[key][seeds.index(run.seed)].path
            raise ValueError(f"{run.path} and {other} are the same run settings with the same seed {run.seed}: "
                             "give each seed once")
        members[key].append(run)
    for key, g in groups.items():
        rs = sorted(members[key], key=lambda r: r.seed)
        g.seeds, g.dirs = [r.seed for r in rs], [r.path for r in rs]
        g.source_fingerprints = [r.source for r in rs]
        g.figures["metric"] = Estimate.of([r.summary.get(g.metric) for r in rs]) if g.metric else None
        for name, get in FIGURES.items():
            if get is not None and g.method != "float":
                g.figures[name] = Estimate.of([get(r.summary) for r in rs])
        g.figures.update(_retention(rs))
    def pairing(r: Run, task: str, board: str) -> str:
        return json.dumps([task, board, _settings(r, method_only=False), r.seed], sort_keys=True, default=str)

    floats = {pairing(r, r.summary["task"], board_settings(r.config.get("board", r.summary.get("board")))): r
              for r in runs if r.summary["method"] == "float"}
    for key, g in groups.items():
        if g.method == "float" or not g.metric:
            continue
        diffs = []
        for r in members[key]:
            f = floats.get(pairing(r, g.task, g.board))
            if f is not None and f.summary.get(g.metric) is not None:
                diffs.append(r.summary[g.metric] - f.summary[g.metric])
        g.gap_to_float = Estimate.of(diffs)
    _eapu_leads(groups, members)
    order = {"float": 0, "bp": 1, "bp-pulses": 2, "eapu": 3}
    return sorted(groups.values(), key=lambda g: (g.task, g.board, order.get(g.method, 9), g.method,
                                                  json.dumps(g.settings, sort_keys=True, default=str)))


def _eapu_leads(groups: dict[str, Group], members: dict[str, list[Run]]) -> None:
    """Each baseline group's :attr:`Group.eapu_lead`: eapu's metric minus the baseline's, per seed, between runs
    that differ only in the method (same task, board and settings, ``w_max`` and ``k`` included)."""
    def key(r: Run):
        return json.dumps([r.summary["task"], board_settings(r.config.get("board", r.summary.get("board"))),
                           _settings(r, method_only=True), r.seed], sort_keys=True, default=str)

    eapu = {key(r): r for k, g in groups.items() if g.method == "eapu" for r in members[k]}
    for k, g in groups.items():
        if g.method in ("float", "eapu") or not g.metric:
            continue
        leads = [eapu[key(r)].summary.get(g.metric) - r.summary[g.metric] for r in members[k]
                 if key(r) in eapu and eapu[key(r)].summary.get(g.metric) is not None]
        g.eapu_lead = Estimate.of(leads)


def _retention(runs: list[Run]) -> dict[str, Estimate | None]:
    out: dict[str, Estimate | None] = {}
    for horizon in ("1s", "1h", "1d"):
        vals = [(r.summary.get("retention") or {}).get(horizon) for r in runs]
        if any(v is not None for v in vals):
            out[f"retention_{horizon}"] = Estimate.of(vals)
    return out


def energy_ratios(runs: list[Run], numerators=("bp", "bp-pulses"), denominator: str = "eapu") -> list[Ratio]:
    """Per-seed ratios of total and write energy between runs that differ only in the method (same task,
    board and training settings, ``w_max`` and ``delta_g_th_k`` included); where one task and board hold
    several settings, each ratio's label names the settings that tell them apart."""
    def key(r: Run):
        return (r.summary["task"], board_settings(r.config.get("board", r.summary.get("board"))),
                json.dumps(_settings(r, method_only=True), sort_keys=True, default=str), r.seed)

    by_method: dict[str, dict] = {}
    for r in runs:
        by_method.setdefault(r.summary["method"], {})[key(r)] = r
    out = []
    for num in numerators:
        for quantity, get in (("total training energy", FIGURES["energy_total_j"]),
                              ("write energy", FIGURES["write_energy_j"])):
            pairs: dict[tuple, list[float]] = {}
            for k, r_num in by_method.get(num, {}).items():
                r_den = by_method.get(denominator, {}).get(k)
                if r_den is None:
                    continue
                a, b = get(r_num.summary), get(r_den.summary)
                if a is not None and b is not None and a > 0 and b > 0:
                    pairs.setdefault(k[:3], []).append(math.log(a / b))
            labels = _ratio_labels(list(pairs))
            for k, logs in sorted(pairs.items(), key=lambda item: labels[item[0]]):
                est = Estimate.of(logs)
                lo = hi = math.nan
                if not math.isnan(est.ci95):
                    lo, hi = math.exp(est.mean - est.ci95), math.exp(est.mean + est.ci95)
                out.append(Ratio(labels[k], quantity, num, denominator, math.exp(est.mean), lo, hi, est.n))
    return out


def _ratio_labels(keys: list[tuple]) -> dict[tuple, str]:
    """``task @ board``, plus ``[name=value, ...]`` for the settings that differ between the keys of one task
    and board (none when it holds one set of settings)."""
    out = {}
    for task, board, settings in keys:
        label = task + ("" if not board else f" @ {board_label(board)}")
        siblings = [json.loads(k[2]) for k in keys if k[:2] == (task, board)]
        out[(task, board, settings)] = label + _differing(json.loads(settings), siblings)
    return out


# ---------------------------------------------------------------------------------------- output

def _metric_scale(metric: str | None) -> tuple[float, str, str]:
    """Display scale, unit and format: accuracy in percent, SSIM as is."""
    if metric == "test_accuracy":
        return 100.0, " %", "{:.2f}"
    return 1.0, "", "{:.4f}"


def _task_table(tg: list[Group], ratios: list[Ratio]) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows and notes (retention, ratios) of one task's groups."""
    task = tg[0].task
    metric = next((g.metric for g in tg if g.metric), None)
    scale, unit, fmt = _metric_scale(metric)
    mname = METRIC_AXES.get(metric, ("metric",))[0]
    head = ["group", "seeds", mname, f"gap to float{' (points)' if unit else ''}", "writes/weight/step",
            "writes/device/step", "total energy (J)", "write energy (J)", "board time (s)"]
    rows = []
    labels = group_labels(tg)
    for g, label in zip(tg, labels):
        def cell(name, fmt_=fmt, sc=1.0):
            e = g.figures.get(name)
            return "-" if e is None else e.text(fmt_, sc)

        rows.append([label, str(len(g.seeds)), cell("metric", fmt, scale),
                     "-" if g.gap_to_float is None else g.gap_to_float.text("{:+.2f}" if unit else "{:+.4f}", scale),
                     cell("write_fraction_per_weight", "{:.3%}"), cell("write_fraction_per_device", "{:.3%}"),
                     cell("energy_total_j", "{:.3g}"), cell("write_energy_j", "{:.3g}"),
                     cell("board_time_s", "{:.1f}")])
    notes = []
    for g, label in zip(tg, labels):
        ret = [(h, g.figures.get(f"retention_{h}")) for h in ("1s", "1h", "1d")]
        if any(e is not None for _, e in ret):
            notes.append(f"retention of {label} (test metric after no writes for): "
                         + ", ".join(f"{h} {e.text(fmt, scale)}" for h, e in ret if e is not None))
    for g, label in zip(tg, labels):
        if g.eapu_lead is not None:
            notes.append(f"eapu minus {label}, {mname.split(' (')[0]}: "
                         f"{g.eapu_lead.text('{:+.2f}' if unit else '{:+.4f}', scale)}{' points' if unit else ''}, "
                         f"paired by seed ({g.eapu_lead.n} seed{'s' if g.eapu_lead.n != 1 else ''})")
    notes += [r.text() for r in ratios if r.task.split(" @ ")[0] == task]
    return head, rows, notes


def code_versions(groups: list[Group]) -> dict[str, int]:
    """How many of the groups' runs each state of the code made (``a>b``: resumed from ``a``'s checkpoint under
    ``b``; ``unknown``: written before fingerprints were recorded)."""
    counts: dict[str, int] = {}
    for g in groups:
        for source in g.source_fingerprints:
            counts[source] = counts.get(source, 0) + 1
    return dict(sorted(counts.items()))


def code_versions_note(groups: list[Group]) -> str | None:
    """One line when the runs were made by more than one state of the code (None otherwise, and when every
    run predates fingerprints: nothing can be told then)."""
    counts = code_versions(groups)
    codes = {code for source in counts for code in source.split(">")}
    if len(codes) < 2:
        return None
    runs = ", ".join(f"{code}: {n} run{'s' if n != 1 else ''}" for code, n in counts.items())
    return (f"mixed code: these runs were made by {len(codes)} versions of the code (source fingerprint {runs}); "
            "figures of different versions may not be comparable")


def _by_task(groups: list[Group]) -> list[list[Group]]:
    return [[g for g in groups if g.task == t] for t in sorted({g.task for g in groups})]


def table(groups: list[Group], ratios: list[Ratio]) -> str:
    """One table per task: mean ± 95 % CI over seeds of every figure, then the ratios within that task."""
    lines: list[str] = []
    for tg in _by_task(groups):
        head, rows, notes = _task_table(tg, ratios)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        lines.append(f"task {tg[0].task} (mean ± 95 % CI over seeds)")
        for r in [head, *rows]:
            lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
        lines += ["  " + n for n in notes]
        lines.append("")
    note = code_versions_note(groups)
    return "\n".join(lines).rstrip() + (f"\n{note}" if note else "")


def markdown(groups: list[Group], ratios: list[Ratio]) -> str:
    """The same tables as :func:`table`, as Markdown."""
    lines: list[str] = []
    for tg in _by_task(groups):
        head, rows, notes = _task_table(tg, ratios)
        lines += [f"#### Task `{tg[0].task}` (mean ± 95 % CI over seeds)", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines += [""] + [f"- {n}" for n in notes] + [""]
    note = code_versions_note(groups)
    if note:
        lines += [f"**{note}**", ""]
    return "\n".join(lines)


def estimate_json(e: Estimate | None) -> dict | None:
    """An estimate as JSON: ``{"mean", "ci95" (null for one seed), "n"}``."""
    return None if e is None else {"mean": e.mean, "ci95": None if math.isnan(e.ci95) else e.ci95, "n": e.n}


def to_json(groups: list[Group], ratios: list[Ratio]) -> dict:
    est = estimate_json
    return {
        "groups": [{"task": g.task, "method": g.method, "board": g.board, "settings": g.settings,
                    "metric": g.metric, "seeds": g.seeds, "dirs": g.dirs,
                    "figures": {k: est(v) for k, v in g.figures.items()},
                    "gap_to_float": est(g.gap_to_float), "eapu_lead": est(g.eapu_lead),
                    "source_fingerprints": g.source_fingerprints}
                   for g in groups],
        "source_fingerprints": code_versions(groups),
        "mixed_code": code_versions_note(groups) is not None,
        "ratios": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()}
                   for r in ratios],
    }


def compare(run_dirs: list[str | Path]) -> tuple[list[Group], list[Ratio]]:
    runs = load_runs(run_dirs)
    return group_runs(runs), energy_ratios(runs)
