"""Side-by-side figures of finished runs (``hil compare``)."""

from __future__ import annotations

import json
from pathlib import Path

COLUMNS = [
    ("method", "method", "{}"),
    ("task", "task", "{}"),
    ("metric", None, "{:.4f}"),
    ("write frac", "write_fraction_mean", "{:.3%}"),
    ("pulses", "pulses_total", "{:,}"),
    ("write E (J)", "write_energy_j", "{:.3g}"),
    ("total E (J)", "energy_total_j", "{:.3g}"),
    ("board (s)", "board_time_s", "{:.1f}"),
    ("wall (s)", "wall_s", "{:.1f}"),
]


def load_summaries(run_dirs: list[str | Path]) -> list[dict]:
    out = []
    for d in run_dirs:
        path = Path(d) / "summary.json"
        if not path.exists():
            raise ValueError(f"{d} holds no summary.json: is it a finished run directory?")
        s = json.loads(path.read_text())
        s["_dir"] = str(d)
        out.append(s)
    return out


def table(summaries: list[dict]) -> str:
    rows = []
    for s in summaries:
        row = []
        for title, key, fmt in COLUMNS:
            if key is None:
                val = s.get("test_accuracy", s.get("test_ssim"))
                row.append("-" if val is None else fmt.format(val))
            else:
                val = s.get(key)
                row.append("-" if val is None else fmt.format(val))
        rows.append(row)
    metric_name = "accuracy" if "test_accuracy" in summaries[0] else "SSIM"
    titles = [metric_name if t == "metric" else t for t, _, _ in COLUMNS]
    widths = [max(len(t), *(len(r[i]) for r in rows)) for i, t in enumerate(titles)]
    lines = ["  ".join(t.rjust(w) for t, w in zip(titles, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    lines += energy_ratios(summaries)
    return "\n".join(lines)


def energy_ratios(summaries: list[dict]) -> list[str]:
    """bp / eapu ratios of the mean total training energy and of the mean write energy (runs that have them)."""
    def mean(method: str, key: str) -> float | None:
        vals = [s[key] for s in summaries if s["method"] == method and s.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    lines = []
    for key, name in (("energy_total_j", "total training energy"), ("write_energy_j", "write energy")):
        bp, eapu = mean("bp", key), mean("eapu", key)
        if bp is not None and eapu:
            note = " (published EaPU figure for training energy: 50.54x)" if key == "energy_total_j" else ""
            lines.append(f"{name} bp/eapu = {bp / eapu:.2f}x{note}")
    return lines
