"""The sweep specification (``hil sweep SPEC.toml``) and its expansion into points.

A spec is a TOML file::

    [sweep]
    calibrate = "per-board"      # one calibration per board, shared by its points (default), or "per-point"

    [base]                       # hil train settings of every point (TrainConfig fields), plus `preset`
    board = "emu"
    task = "digits"
    epochs = 10

    [device]                     # device-parameter overrides of emulated boards (DeviceParams fields)
    sigma_w_s = 1e-6

    [calibration]                # calibration settings (CalibrationParams fields but `seed`)
    sample = 256

    [grid]                       # axes crossed with each other
    seed = "0-4"                 # a count-or-list like hil demo --seeds, or a list
    method = ["float", "bp", "eapu"]

    [zip]                        # lists of one length, taken together (then crossed with the grid)
    "device.sigma_w_s" = [0.5e-6, 1e-6]
    lr = [0.03, 0.05]

An axis is a TrainConfig field (``seed``, ``method``, ``task``, ``lr``, ``delta_g_th_k``, ...), ``board``,
``preset`` (device preset of an emulated board), ``device.FIELD`` or ``calibration.FIELD``.

Each point becomes one ordinary ``hil train`` run.  Its board follows ``hil demo``: an emulated
board gets the point's seed (``emu?seed=S``: each seed its own board), its preset, and a device
file holding its device overrides (written under the sweep folder, named by the overrides).
``per-board``: a calibration is made once per board (the address with its seed) and calibration
settings, with the lowest seed of the points that share it, before their training; ``per-point``:
each run calibrates its own board at its start, as ``hil train`` without ``--calibration`` does
(calibration settings then must be the defaults).

Points on a physical board (``serial:``, ``visa:``) need the board as a Ray resource:
:func:`board_resource` names it (docs/SWEEPS.md).

A ``[tune]`` table makes the sweep choose: its [grid]/[zip] combinations are the candidates, tried on
the tuning seeds; the best one is then run on the evaluation seeds (:class:`TuneOptions`,
:mod:`hil.sweep_tune`).
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from hil.demo import board_for_seed, parse_seeds
from hil.sweep_boards import (
    board_key,
    board_resource,
    is_emulator,
    safe_name,
    with_query,
)
from protocols.unit_names import new_name, upgrade_old_names

AXIS_PREFIXES = ("device.", "calibration.")
BOARD_AXES = {"board", "preset"}


class SpecError(ValueError):
    """A spec that cannot run: the message is one line naming the file, the place and what to do."""


class SweepOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    calibrate: Literal["per-board", "per-point"] = Field(
        "per-board", description="per-board: one calibration per board, shared by its points; "
                                 "per-point: each run calibrates its own board")
    description: str = ""


def _seed_list(value: list | str, name: str) -> list[int]:
    if isinstance(value, str):
        try:
            return parse_seeds(value)
        except ValueError as exc:
            raise ValueError(str(exc).replace("--seeds", name)) from None
    if not value or len(set(value)) != len(value) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise ValueError(f"{name} must name seeds (integers >= 0), each once, e.g. \"100-104\" or [100, 101]")
    return list(value)


class TuneOptions(BaseModel):
    """``[tune]``: choose among the [grid]/[zip] combinations on tuning seeds, report on evaluation seeds.

    The objective is the mean over the tuning seeds of ``metric`` of ``method``'s runs (``objective =
    "gap"``: of its paired gap to ``gap_to``'s run of the same seed), maximised or minimised; the
    bounds (``at_most``, ``at_least``) apply to the tuning-seed means of the method's figures.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tuning_seeds: list[int]
    evaluation_seeds: list[int]
    method: str = Field("eapu", description="the method whose settings are tuned")
    metric: str = Field("test_accuracy", description="test_accuracy, test_ssim or a hil compare figure")
    goal: Literal["max", "min"] = "max"
    gap_to: Literal["float"] | None = Field(None, description="reference run on both seed sets; gaps paired by seed")
    objective: Literal["metric", "gap"] | None = Field(None, description="default: gap with gap_to, else metric")
    baselines: list[str] = Field(default_factory=list, description="also run on the evaluation seeds")
    at_most: dict[str, float] = Field(default_factory=dict, description="figure -> bound on its tuning-seed mean")
    at_least: dict[str, float] = Field(default_factory=dict)

    @field_validator("tuning_seeds", "evaluation_seeds", mode="before")
    @classmethod
    def _seeds(cls, value, info):
        if not isinstance(value, (list, str)):  # pydantic reports a ValueError, not a TypeError
            raise ValueError(f"{info.field_name} is a list of seeds or a range like \"100-104\"")  # noqa: TRY004
        return _seed_list(value, info.field_name)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in tune_metrics():
            raise ValueError(f"unknown metric {metric!r}; one of {', '.join(tune_metrics())}")
        return metric

    @field_validator("at_most", "at_least")
    @classmethod
    def _known_bounds(cls, bounds: dict) -> dict:
        for name in bounds:
            if name not in tune_metrics():
                raise ValueError(f"unknown figure {name!r}; one of {', '.join(tune_metrics())}")
        return bounds

    @model_validator(mode="after")
    def _consistent(self) -> TuneOptions:
        both = sorted(set(self.tuning_seeds) & set(self.evaluation_seeds))
        if both:
            raise ValueError(f"tuning_seeds and evaluation_seeds share seed{'s' if len(both) > 1 else ''} "
                             f"{', '.join(map(str, both))}: figures on the seeds the choice was made on are "
                             "not honest; make the two sets disjoint")
        if self.objective == "gap" and self.gap_to is None:
            raise ValueError('objective = "gap" needs gap_to (e.g. gap_to = "float")')
        if self.gap_to is not None and self.objective != "metric" and self.metric not in TEST_METRICS:
            raise ValueError(f"a gap is taken of a test metric ({', '.join(TEST_METRICS)}), not {self.metric!r}")
        if self.gap_to == self.method:
            raise ValueError(f"gap_to names the tuned method {self.method!r} itself; name the reference (float)")
        extra = [m for m in self.baselines if m in (self.method, self.gap_to)]
        if extra or len(set(self.baselines)) != len(self.baselines):
            raise ValueError("baselines lists methods besides method and gap_to, each once")
        return self

    @property
    def by_gap(self) -> bool:
        return self.objective == "gap" or (self.objective is None and self.gap_to is not None)


TEST_METRICS = ("test_accuracy", "test_ssim")


def tune_metrics() -> tuple[str, ...]:
    """What a tune objective or bound may name: the test metric or a figure of ``hil compare``."""
    from hil.compare import FIGURES

    return TEST_METRICS + tuple(k for k in FIGURES if k != "metric")


class SweepSpec(BaseModel):
    """The parsed TOML spec; :func:`expand` validates and expands it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sweep: SweepOptions = SweepOptions()
    base: dict[str, Any] = Field(default_factory=dict)
    device: dict[str, Any] = Field(default_factory=dict)
    calibration: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list | str] = Field(default_factory=dict)
    zip: dict[str, list] = Field(default_factory=dict)
    tune: TuneOptions | None = None

    @field_validator("base", "device", "calibration", "grid", "zip", mode="before")
    @classmethod
    def _old_second_names(cls, names: Any) -> Any:
        """Setting, parameter and axis names of a spec written before seconds were ``_sec`` (``device.<stem>_s``)
        in today's spelling (``device.<stem>_sec``)."""
        if isinstance(names, dict):
            return {new_name(k) if isinstance(k, str) else k: upgrade_old_names(v) for k, v in names.items()}
        return names

    @field_validator("grid", "zip")
    @classmethod
    def _axes_not_empty(cls, axes: dict) -> dict:
        for name, values in axes.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"axis {name!r} has no values")
        return axes


@dataclass(frozen=True)
class Calibration:
    """A calibration shared by the points of one board (per-board mode)."""

    name: str
    board: str
    params: dict          # CalibrationParams fields, seed included
    resource: str | None  # Ray resource of a physical board


@dataclass(frozen=True)
class Point:
    name: str
    values: dict          # the point's axis values
    config: dict          # TrainConfig fields (calibration path included)
    calibration: str | None  # name of its shared Calibration, if any
    resource: str | None
    phase: str | None = None  # tune mode: "tuning" or "evaluation"


# ---------------------------------------------------------------------------------------- helpers

def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def _label(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(_label(v) for v in value)
    return str(value)


def point_name(values: dict) -> str:
    """A point's name and folder: its axis values, ``seed=0,method=eapu``."""
    return safe_name(",".join(f"{k}={_label(v)}" for k, v in values.items()) or "base")


def _check_axis(name: str, where: str, train_fields: set[str], device_fields: set[str], cal_fields: set[str]) -> None:
    if name.startswith("device."):
        if name[7:] not in device_fields:
            raise SpecError(f"{where}: unknown device parameter {name[7:]!r} (a DeviceParams field, "
                            "e.g. device.sigma_w_s)")
    elif name.startswith("calibration."):
        if name[12:] == "seed":
            raise SpecError(f"{where}: calibration.seed is set from the points' seeds; sweep `seed` instead")
        if name[12:] not in cal_fields:
            raise SpecError(f"{where}: unknown calibration setting {name[12:]!r} (a CalibrationParams field)")
    elif name in ("calibration", "allow_foreign_calibration"):
        raise SpecError(f"{where}: {name!r} is chosen by the sweep ([sweep] calibrate = per-board|per-point)")
    elif name not in train_fields | BOARD_AXES:
        raise SpecError(f"{where}: unknown setting {name!r}; use a hil train setting "
                        f"({', '.join(sorted(train_fields - {'calibration', 'allow_foreign_calibration'}))}), "
                        "preset, device.FIELD or calibration.FIELD")


# ---------------------------------------------------------------------------------------- expansion

def load_spec(path: str | Path) -> tuple[SweepSpec, dict]:
    """The spec in ``path`` and its raw TOML content; :class:`SpecError` with one line for a bad file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path} is not valid TOML: {exc}") from None
    try:
        return SweepSpec(**raw), raw
    except ValidationError as exc:
        raise SpecError(f"{path}: {_one_line(exc)}") from None
    except TypeError as exc:
        raise SpecError(f"{path}: {exc}") from None


def _axis_values(name: str, values: list | str, where: str) -> list:
    if name == "seed" and isinstance(values, str):
        try:
            return parse_seeds(values)
        except ValueError as exc:
            raise SpecError(f"{where}: {str(exc).replace('--seeds', 'seed')}") from None
    if isinstance(values, str):
        raise SpecError(f"{where}: axis {name!r} needs a list of values, e.g. {name} = [1, 2]")
    return values


def combinations(spec: SweepSpec, where: str) -> list[dict]:
    """The points' axis values: the grid's product, each crossed with the zipped lists taken together."""
    grid = {n: _axis_values(n, v, f"{where} [grid] {n}") for n, v in spec.grid.items()}
    zipped = {n: _axis_values(n, v, f"{where} [zip] {n}") for n, v in spec.zip.items()}
    both = set(grid) & set(zipped)
    if both:
        raise SpecError(f"{where}: {sorted(both)} is both a [grid] and a [zip] axis; keep it in one")
    lengths = {len(v) for v in zipped.values()}
    if len(lengths) > 1:
        raise SpecError(f"{where}: the [zip] lists must have one length, got "
                        + ", ".join(f"{n}: {len(v)}" for n, v in zipped.items()))
    zip_rows = [dict(zip(zipped, row)) for row in zip(*zipped.values())] if zipped else [{}]
    grid_rows = [dict(zip(grid, row)) for row in itertools.product(*grid.values())] if grid else [{}]
    return [{**g, **z} for g in grid_rows for z in zip_rows]


def expand(spec: SweepSpec, out_dir: str | Path, where: str = "spec") -> tuple[list[Point], list[Calibration], dict]:
    """Points, shared calibrations and device files (path -> TOML text) of ``spec`` for a sweep in ``out_dir``.

    Every point is validated here (its TrainConfig, device and calibration settings), so a bad spec
    fails before anything runs.  (A tune spec's points come in two phases: :mod:`hil.sweep_tune`.)
    """
    check_settings(spec, where)
    return expand_rows(spec, combinations(spec, where), out_dir, where)


def check_settings(spec: SweepSpec, where: str) -> None:
    """Every setting named in [base], [device], [calibration], [grid] and [zip] is one a point can take."""
    from calibration.run import CalibrationParams
    from drivers.emulator_board import device_param_fields
    from hil.train import TrainConfig

    train_fields = set(TrainConfig.model_fields)
    device_fields = device_param_fields()
    cal_fields = set(CalibrationParams.model_fields) - {"seed"}
    for name in spec.base:
        _check_axis(name, f"{where} [base]", train_fields, device_fields, cal_fields)
        if "." in name:
            raise SpecError(f"{where} [base]: {name!r} belongs in its own table ([device] or [calibration])")
    for name in spec.device:
        _check_axis(f"device.{name}", f"{where} [device]", train_fields, device_fields, cal_fields)
    for name in spec.calibration:
        _check_axis(f"calibration.{name}", f"{where} [calibration]", train_fields, device_fields, cal_fields)
    for table in ("grid", "zip"):
        for name in getattr(spec, table):
            _check_axis(name, f"{where} [{table}]", train_fields, device_fields, cal_fields)


def _point_address(here: str, address: str, preset, device: dict, seed, out_dir: Path,
                   devices: dict[str, str]) -> str:
    """The board address of one point: preset, device file (recorded in ``devices``) and seed applied."""
    from drivers.emulator_board import device_file_text

    if is_emulator(address):
        if preset is not None:
            address = with_query(address, preset=str(preset))
        if device:
            query = dict(parse_qsl(address.partition("?")[2]))
            try:
                text = device_file_text(query.get("preset", "default"), query.get("config"), device)
            except ValueError as exc:  # ValidationError is one
                text = _one_line(exc) if isinstance(exc, ValidationError) else str(exc)
                raise SpecError(f"{here}: device parameters: {text}") from None
            label = ",".join(f"{k}={_label(v)}" for k, v in sorted(device.items()))
            path = out_dir / "devices" / f"{safe_name(label)}.toml"
            devices[str(path)] = text
            address = with_query(address, config=str(path))
        if isinstance(seed, int):
            address = board_for_seed(address, seed)
    elif preset is not None or device:
        raise SpecError(f"{here}: preset and device.* apply to emulated boards (emu...), not to {address}")
    return address


def _point_calibration(spec: SweepSpec, here: str, settings: dict, address: str, cal: dict, seed,
                       out_dir: Path, calibrations: dict[str, dict]) -> str | None:
    """Name of the shared calibration one point uses (recorded in ``calibrations``), or None.

    Sets ``settings["calibration"]`` to that calibration's file when there is one.
    """
    from calibration.run import CalibrationParams
    from hil.train import TrainConfig

    try:
        cal_params = CalibrationParams(**{**cal, "seed": seed if isinstance(seed, int) else 0})
    except ValidationError as exc:
        raise SpecError(f"{here}: calibration settings: {_one_line(exc)}") from None
    method = settings.get("method", TrainConfig.model_fields["method"].default)
    if method != "float" and spec.sweep.calibrate == "per-board":
        key = board_key(address)
        if cal:
            key += "," + safe_name(",".join(f"{k}={_label(v)}" for k, v in sorted(cal.items())))
        entry = calibrations.setdefault(key, {"board": address, "params": cal_params.model_dump(mode="json")})
        entry["params"]["seed"] = min(entry["params"]["seed"], cal_params.seed)
        settings["calibration"] = str(out_dir / "calibrations" / key / "calibration.json")
        return key
    if method != "float" and cal:
        raise SpecError(f"{here}: calibration settings need [sweep] calibrate = \"per-board\" "
                        "(a per-point run calibrates as hil train does, with the defaults)")
    return None


def expand_rows(spec: SweepSpec, rows: list[dict], out_dir: str | Path, where: str = "spec",
                phase: str | None = None) -> tuple[list[Point], list[Calibration], dict]:
    """:func:`expand` for given axis values (one dict per point) on top of the spec's tables."""
    from hil.train import TrainConfig

    out_dir = Path(out_dir).resolve()
    points: list[Point] = []
    devices: dict[str, str] = {}
    calibrations: dict[str, dict] = {}
    names: set[str] = set()
    for values in rows:
        name = ",".join(f"{k}={_label(v)}" for k, v in values.items()) or "base"
        here = f"{where}: point {name}"
        settings = {**spec.base, **{k: v for k, v in values.items() if "." not in k}}
        device = {**spec.device, **{k[7:]: v for k, v in values.items() if k.startswith("device.")}}
        cal = {**spec.calibration, **{k[12:]: v for k, v in values.items() if k.startswith("calibration.")}}
        seed = settings.get("seed", 0)
        address = str(settings.pop("board", "emu"))
        preset = settings.pop("preset", None)
        address = _point_address(here, address, preset, device, seed, out_dir, devices)
        cal_name = _point_calibration(spec, here, settings, address, cal, seed, out_dir, calibrations)
        method = settings.get("method", TrainConfig.model_fields["method"].default)
        try:
            cfg = TrainConfig(**settings, board=address)
        except ValidationError as exc:
            raise SpecError(f"{here}: {_one_line(exc)}") from None
        if name in names:
            raise SpecError(f"{where}: point {name} appears twice; give each axis value once")
        names.add(name)
        resource = board_resource(address) if method != "float" else None
        points.append(Point(point_name(values), values, cfg.model_dump(mode="json"), cal_name, resource, phase))
    cals = [Calibration(k, v["board"], v["params"], board_resource(v["board"])) for k, v in calibrations.items()]
    return points, cals, devices
