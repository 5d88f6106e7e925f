"""The walkthrough notebook (examples/walkthrough.ipynb) is its source's conversion and runs top to bottom.

Its code cells are executed in order in one namespace, as a kernel would (no jupyter needed), with
matplotlib's non-interactive backend and the notebook's output folder in tmp_path.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

from tests.scripts import load_script

pytestmark = pytest.mark.slow  # a calibration and three short trainings on the emulator

ROOT = Path(__file__).resolve().parents[1]


def _converter():
    return load_script("examples/to_ipynb.py")


def test_the_committed_notebook_is_made_from_its_source():
    conv = _converter()
    assert (ROOT / "examples" / "walkthrough.ipynb").read_text() == conv.render(conv.SOURCE.read_text()), \
        "examples/walkthrough.ipynb is out of date: run python examples/to_ipynb.py"


def test_the_notebook_calibrates_trains_and_compares(tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.setenv("HIL_EXAMPLE_OUT", str(tmp_path / "out"))
    monkeypatch.chdir(tmp_path)
    nb = json.loads((ROOT / "examples" / "walkthrough.ipynb").read_text())
    code = [("".join(c["source"])) for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) >= 5
    namespace: dict = {"__name__": "__main__"}
    for k, source in enumerate(code):
        exec(compile(source, f"walkthrough.ipynb cell {k}", "exec"), namespace)
    out = tmp_path / "out"
    assert (out / "calibration" / "calibration.json").is_file()
    for method in ("float", "bp", "eapu"):
        summary = json.loads((out / method / "summary.json").read_text())
        assert summary["task"] == "digits-small" and summary["epochs"] == 2
    assert {g.method for g in namespace["groups"]} == {"float", "bp", "eapu"}
    assert (out / "comparison_digits-small.png").is_file()
