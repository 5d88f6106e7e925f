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
    ("read E (J)", "read_energy_j", "{:.3g}"),
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
                row.append(fmt.format(s.get(key, 0)))
        rows.append(row)
    metric_name = "accuracy" if "test_accuracy" in summaries[0] else "SSIM"
    titles = [metric_name if t == "metric" else t for t, _, _ in COLUMNS]
    widths = [max(len(t), *(len(r[i]) for r in rows)) for i, t in enumerate(titles)]
    lines = ["  ".join(t.rjust(w) for t, w in zip(titles, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    by_method = {s["method"]: s for s in summaries}
    if "bp" in by_method and "eapu" in by_method and by_method["eapu"]["write_energy_j"] > 0:
        ratio = by_method["bp"]["write_energy_j"] / by_method["eapu"]["write_energy_j"]
        lines.append(f"write energy bp / eapu = {ratio:.1f}x (published: 50.54x)")
    return "\n".join(lines)
