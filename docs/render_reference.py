"""Render docs/REFERENCE.md from the pydantic models: the device-model TOML, the limits file, the bench file.

    python docs/render_reference.py            # rewrite docs/REFERENCE.md
    python docs/render_reference.py --check    # exit 1 if the committed file differs

Every table is made from the models' fields (name, type, default, constraints, description), so the
reference cannot drift from the code; tests/test_reference_doc.py checks the committed file.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUT = ROOT / "docs" / "REFERENCE.md"

_CONSTRAINTS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "length >="))


def unit(name: str) -> str:
    """SI unit of a field from the suffix its name carries (the project's naming rule)."""
    for suffix, u in (("_sec", "s"), ("_s", "S"), ("_v", "V"), ("_a", "A"), ("_j", "J"), ("_f", "F"), ("_baud", "1/s"), ("_bits", "bit")):
        if name.endswith(suffix):
            return u
    if name.endswith("_rel") or name.startswith("sigma_") or name.endswith(("_fraction", "_share", "_loss")):
        return "relative"
    return ""


def _type(annotation) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    text = text or str(annotation).replace("typing.", "")
    text = text.replace("NoneType", "None").replace(" | ", " or ")
    return re.sub(r"Literal\[(.*)\]", lambda m: "one of " + m.group(1).replace("'", '"'), text)


def _number(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_number(v) for v in value) + "]"
    return str(value)


def _constraints(field) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sign in _CONSTRAINTS:
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sign} {_number(value)}")
    return ", ".join(parts)


def _default(field, override=None) -> str:
    if override is not None:
        return _number(override)
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return _number(field.default_factory())
    return "unset" if field.default is None else _number(field.default)


def field_table(model: type[BaseModel], defaults: BaseModel | None = None, extra_columns: dict | None = None) -> str:
    """A Markdown table of ``model``'s fields; ``defaults``: an instance whose values are the defaults shown."""
    extra_columns = extra_columns or {}
    head = ["field", "unit", "type", "default", "allowed", *extra_columns, "meaning"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, field in model.model_fields.items():
        shown = getattr(defaults, name) if defaults is not None else None
        cells = [f"`{name}`", unit(name), _type(field.annotation), _default(field, shown), _constraints(field),
                 *(_number(col[name]) if name in col else "" for col in extra_columns.values()),
                 (field.description or "").replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


def _device_model_section() -> list[str]:
    from firmware_stub.device_params import DeviceParams, preset_fields, preset_names

    presets = {f"preset {name}": preset_fields(name) for name in preset_names() if name != "default"}
    return [
        "## Device-model TOML (`hil emulator serve --config FILE`, `emu?config=FILE`, `serve-bench --config FILE`)",
        "",
        f"`firmware_stub.device_params.DeviceParams`: {_doc(DeviceParams)} The file holds any subset of these "
        "fields, flat or under a `[device]` table; unknown names are an error. A preset (`--preset NAME`, "
        f"`emu?preset=NAME`; shipped: {', '.join(preset_names())}) is applied first and the file's fields override "
        "it. The preset columns show only the fields a preset changes.",
        "",
        field_table(DeviceParams, extra_columns=presets),
        "",
    ]


def _bench_file_sections() -> list[str]:
    from drivers import bench_file as bf
    from drivers.limits import DEVICE_SAFE_LIMITS, SafetyLimits

    parts = [
        "## Bench file (`--board visa:FILE`)",
        "",
        "`drivers.bench_file.BenchFile`, one table per section. docs/BENCH.md shows a whole file and the "
        "wiring it describes.",
        "",
    ]
    for section, model in (("bench", bf.BenchSection), ("smu", bf.SmuSection),
                           ("pulse_generator", bf.PulseGeneratorSection), ("switch_matrix", bf.SwitchMatrixSection),
                           ("wiring", bf.WiringSection), ("write_verify", bf.WriteVerifySection)):
        parts += [f"### `[{section}]`", ""]
        if _doc(model) and model.__doc__ != bf._Section.__doc__:
            parts += [_doc(model), ""]
        parts += [field_table(model), ""]
    parts += [
        "### `[limits]`",
        "",
        "The bench's hardware limits: the fields of the limits file above. A field left out (or the whole "
        "section) takes the device-safe default below (`drivers.limits.DEVICE_SAFE_LIMITS`), never the "
        "instruments' ratings; a value beyond an instrument's rating is cut to the rating.",
        "",
        field_table(SafetyLimits, defaults=DEVICE_SAFE_LIMITS),
        "",
    ]
    return parts


def render() -> str:
    from drivers.limits import SafetyLimits

    parts = [
        "# Reference: device model, limits file, bench file",
        "",
        "Generated by `python docs/render_reference.py` from the pydantic models; do not edit by hand "
        "(tests/test_reference_doc.py fails when this file and the models differ). Units follow the field "
        "names: `_s` siemens, `_sec` seconds (a file written before seconds were `_sec` is still read: there "
        "`<name>_s` of a time means `<name>_sec`), `_v` volts, `_a` amperes, `_j` "
        "joules, `_f` farads. \"unset\" means the field is optional and has no value unless given.",
        "",
        *_device_model_section(),
        "## Limits file (`hil --limits FILE`)",
        "",
        f"`drivers.limits.SafetyLimits`: {_doc(SafetyLimits)} The file holds any subset of these fields, flat "
        "or under a `[limits]` table. The effective limit of each field is the tighter of this file's value (or "
        "the default below) and the board's hardware limit; a looser value in this file is logged and not used "
        "(`hil info` shows which side set each limit).",
        "",
        field_table(SafetyLimits),
        "",
        *_bench_file_sections(),
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/REFERENCE.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python docs/render_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
