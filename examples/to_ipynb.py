"""Make examples/walkthrough.ipynb from examples/walkthrough.py (jupytext "percent" cells), without jupytext.

    python examples/to_ipynb.py

``# %%`` starts a code cell, ``# %% [markdown]`` a Markdown cell whose lines drop their leading ``# ``.
The result is an nbformat 4 notebook with no outputs; tests/test_example_notebook.py checks that the
committed notebook is this conversion of the source and runs its code cells.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "walkthrough.py"
NOTEBOOK = HERE / "walkthrough.ipynb"


def cells(text: str) -> list[tuple[str, str]]:
    """(kind, source) of every cell of a percent-format script."""
    out: list[tuple[str, str]] = []
    for chunk in re.split(r"^# %%", text, flags=re.M)[1:]:
        header, _, body = chunk.partition("\n")
        kind = "markdown" if "[markdown]" in header else "code"
        body = body.strip("\n")
        if kind == "markdown":
            body = "\n".join(re.sub(r"^# ?", "", line) for line in body.splitlines())
        out.append((kind, body))
    return out


def notebook(text: str) -> dict:
    def cell(kind: str, source: str) -> dict:
        lines = source.splitlines(keepends=True)
        base = {"cell_type": kind, "metadata": {}, "source": lines}
        return {**base, "execution_count": None, "outputs": []} if kind == "code" else base

    return {"cells": [cell(k, s) for k, s in cells(text)],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 4}


def render(text: str) -> str:
    return json.dumps(notebook(text), indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    NOTEBOOK.write_text(render(SOURCE.read_text()))
    print(NOTEBOOK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
