"""The layering of docs/DESIGN.md, checked on the source: every import arrow must be one the docs allow.

Imports are read with ``ast`` from every module of the five packages (lazy imports inside
functions included), so an arrow hidden in a function body counts like one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocols", "firmware_stub", "drivers", "calibration", "hil")

ALLOWED: dict[str, set[str]] = {
    "protocols": set(),
    "firmware_stub": {"protocols"},
    "drivers": {"protocols"},
    "calibration": {"drivers", "protocols"},
    "hil": {"calibration", "drivers", "protocols"},
}
"""Packages each package may import (besides itself): imports point downward only."""

EMULATOR_DOORS = {"drivers.emulator_board", "hil.cli.emulator", "hil.cli.bench"}
"""The only modules above ``firmware_stub`` that may import it: the in-process emulator board,
and the commands that serve or time the emulators."""

BOARD_CONTRACT = {"drivers", "drivers.address", "drivers.board", "drivers.emulator_board", "drivers.errors",
                  "drivers.limits", "drivers.bench_file"}
"""What ``calibration`` and ``hil`` may use of ``drivers``: the Board contract, its errors and limits,
the openers (with the emulated device's parameter files); never a transport or an instrument."""

TRANSPORT_DOORS = {"hil.cli.bench"}
"""Modules of ``hil`` that may reach past the contract: timing the link itself."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str) -> set[str]:
    """Absolute names of the project modules ``source`` (the text of ``module``) imports."""
    names: set[str] = set()
    package = module if module.count(".") == 0 else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: max(0, package.count(".") + 1 - (node.level - 1))]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {n for n in names if n.split(".")[0] in PACKAGES}


def violations(module: str, imported: set[str], existing: set[str]) -> list[str]:
    """The arrows from ``module`` to ``imported`` that the layering forbids (``existing``: all modules,
    so that ``from pkg import name`` is told apart from ``from pkg import module``)."""
    out: list[str] = []
    own = module.split(".")[0]
    targets = {name if name in existing else name.rsplit(".", 1)[0] for name in imported}
    for target in sorted(targets):
        pkg = target.split(".")[0]
        if pkg == own:
            continue
        if pkg not in ALLOWED[own] and not (pkg == "firmware_stub" and module in EMULATOR_DOORS):
            out.append(f"{module} -> {target}: {own} may import only {sorted(ALLOWED[own]) or 'nothing of ours'}")
        elif (pkg == "drivers" and own in ("calibration", "hil") and target not in BOARD_CONTRACT
              and module not in TRANSPORT_DOORS):
            out.append(f"{module} -> {target}: {own} talks to boards only through the Board contract")
    return out


def _tree() -> dict[str, str]:
    return {_module_name(p): p.read_text(encoding="utf-8") for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def test_every_import_arrow_is_one_the_layering_allows():
    tree = _tree()
    found = [v for module, src in tree.items() for v in violations(module, imports_of(src, module), set(tree))]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(("module", "line"), [
    ("protocols.framing", "import drivers.board"),
    ("firmware_stub.firmware", "from hil.train import train"),
    ("drivers.fpga", "from firmware_stub.firmware import make_emulator"),
    ("calibration.run", "from hil import interruptions"),
    ("calibration.threshold", "from drivers.fpga import FpgaBoard"),
    ("hil.train", "    from drivers.links import SerialLink"),
    ("hil.layers", "from firmware_stub import array_model"),
])
def test_a_forbidden_arrow_is_caught(module, line):
    tree = _tree()
    src = tree[module]
    body = line.strip() if not line.startswith(" ") else f"def _late():\n{line}\n"
    assert not violations(module, imports_of(src, module), set(tree))
    assert violations(module, imports_of(src + "\n" + body + "\n", module), set(tree))
