"""docs/REFERENCE.md is what docs/render_reference.py makes from the pydantic models, and says something of every field."""

from __future__ import annotations

from pathlib import Path

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def _renderer():
    return load_script("docs/render_reference.py")


def test_committed_reference_equals_the_regenerated_one():
    rendered = _renderer().render()
    assert (ROOT / "docs" / "REFERENCE.md").read_text() == rendered, \
        "docs/REFERENCE.md is out of date: run python docs/render_reference.py"


def test_every_field_has_a_meaning_and_the_presets_and_units_are_shown():
    from drivers.bench_file import BenchFile
    from drivers.limits import SafetyLimits
    from firmware_stub.device_params import DeviceParams

    text = _renderer().render()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows and all(not line.rstrip().endswith("|  |") for line in rows), "a field without a description"
    for model in (DeviceParams, SafetyLimits, *(f.annotation for n, f in BenchFile.model_fields.items()
                                                if n != "limits")):
        for name in model.model_fields:
            assert f"| `{name}` |" in text, name
    assert "| `sigma_w_s` | S | float | 1e-06 | >= 0 | 2e-06 |" in text  # default, then preset noisy2x
    assert "| `t_read_sec` | s |" in text and "| `max_set_v` | V |" in text and "| `compliance_a` | A |" in text
    assert "| `max_set_v` | V | float | 3 |" in text  # the bench's [limits] default: DEVICE_SAFE_LIMITS
