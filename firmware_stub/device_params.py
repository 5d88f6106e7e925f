"""The one validated parameter set of the emulated memristor array (see shared DEVICE_MODEL.md).

All values are SI (siemens, volts, seconds, joules, farads).  Defaults are
literature-typical for a 1T1R HfOx/TaOx RRAM array and are a starting point, not a
law.  A TOML file with any subset of the fields (flat, or under a ``[device]`` table)
overrides the defaults; unknown keys are an error so a typo cannot pass silently.

Presets are such files shipped with the package (``firmware_stub/presets/NAME.toml``):
``default`` (all defaults), ``noisy2x`` (write error and cycle-to-cycle spread doubled) and
``paper`` (the published EaPU simulation's write error on our weight scale, see the file).
A user file given with a preset overrides the preset's fields.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from pydantic import ConfigDict, Field, ValidationError, model_validator

from protocols.unit_names import AcceptsOldSecondNames

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class DeviceParams(AcceptsOldSecondNames):
    """Physical and peripheral parameters of the emulated array."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # window
    g_min_s: float = Field(1e-6, gt=0, description="lower conductance bound")
    g_max_s: float = Field(100e-6, gt=0, description="nominal upper conductance bound")
    sigma_bound: float = Field(0.05, ge=0, lt=0.5, description="relative device-to-device spread of g_max")
    g_init_s: float = Field(5e-6, gt=0, description="mean conductance of a fresh device")
    sigma_init_rel: float = Field(0.2, ge=0, description="relative spread of the fresh conductance")

    # soft-bounds pulse response at the nominal pulse
    alpha_set_s: float = Field(1.0e-6, gt=0, description="SET step at x=0; mid-window mean step is alpha*(0.5)**gamma")
    gamma_set: float = Field(1.0, ge=0, description="soft-bounds exponent of SET: step alpha*(1-x)**gamma")
    reset_asymmetry: float = Field(1.2, gt=0, description="alpha_reset = reset_asymmetry * alpha_set")
    gamma_reset: float = Field(1.0, ge=0, description="soft-bounds exponent of RESET: step alpha*x**gamma")
    sigma_d2d: float = Field(0.3, ge=0, lt=1, description="relative device-to-device spread of alpha")
    sigma_c2c: float = Field(1.0, ge=0, description="relative cycle-to-cycle spread of every pulse's step")

    # write noise and relaxation
    sigma_w_s: float = Field(1e-6, ge=0, description="write error of each write event, added to the stored state (persistent: later writes start from it)")
    relax_mu_s: float = Field(0.09e-6, ge=0, description="mean relaxation: -mu*ln(1+t/t0)")
    relax_sigma0_s: float = Field(0.4e-6, ge=0, description="relaxation spread at t=0")
    relax_sigma1_s: float = Field(0.04e-6, ge=0, description="relaxation spread growth per ln(1+t/t0)")
    relax_t0_sec: float = Field(1.0, gt=0, description="time scale t0 of the relaxation")

    # reads
    read_noise_rel: float = Field(0.01, ge=0, description="relative read noise, fresh at every read")
    read_voltage_v: float = Field(0.2, gt=0, description="voltage of a read")
    t_read_sec: float = Field(100e-9, gt=0, description="integration time of one cell read (energy)")

    # defects and wear
    stuck_fraction: float = Field(0.01, ge=0, le=1, description="fraction of devices stuck at g_min or g_max")
    stuck_high_share: float = Field(0.5, ge=0, le=1, description="share of stuck devices stuck at g_max")
    endurance_pulses: float = Field(1e6, gt=0, description="N_end: pulses after which a device wears out")
    wear_window_loss: float = Field(0.5, ge=0, le=1, description="fraction of the window lost between N_end and 2*N_end; stuck at 2*N_end")

    # forming: a fraction of fresh devices needs a forming pulse before it switches
    unformed_fraction: float = Field(0.0, ge=0, le=1, description="fraction of devices that start unformed")
    g_unformed_s: float = Field(0.02e-6, gt=0, description="conductance of an unformed device")
    v_form_v: float = Field(2.6, gt=0, description="mean forming voltage")
    sigma_form_rel: float = Field(0.05, ge=0, description="relative device-to-device spread of the forming voltage")

    # pulse amplitude/width dependence: step scales as ((|V|-Vth)/(Vnom-Vth))**p * (w/wnom)
    v_set_nominal_v: float = Field(1.6, gt=0, description="SET amplitude at which the step is alpha_set_s")
    v_reset_nominal_v: float = Field(-1.8, lt=0, description="RESET amplitude at which the step is alpha_reset")
    v_set_threshold_v: float = Field(0.8, gt=0, description="SET amplitude below which nothing changes")
    v_reset_threshold_v: float = Field(-0.9, lt=0, description="RESET amplitude above which nothing changes")
    amplitude_exponent: float = Field(2.0, gt=0, description="exponent p of the amplitude dependence")
    width_nominal_sec: float = Field(50e-9, gt=0, description="pulse width at which the step is alpha")

    # converters and energy (sources and hand checks: docs/ENERGY.md)
    dac_bits: int = Field(8, ge=2, le=16, description="resolution of the VMM input DACs")
    adc_bits: int = Field(10, ge=2, le=16, description="resolution of the read and VMM output ADCs")
    adc_energy_j: float = Field(2e-12, ge=0, description="energy of one ADC conversion (a VMM output or a cell read)")
    dac_energy_j: float = Field(0.5e-12, ge=0, description="energy of one DAC conversion (one VMM input of one vector)")
    line_capacitance_f: float = Field(16e-15, ge=0, description="row + column line charged by every write pulse: C*V^2 per pulse")
    write_periphery_energy_j: float = Field(1e-12, ge=0, description="fixed driver/decoder/level-shifter energy per device "
                                                                     "written (per write event)")

    # timing (board clock; docs/DESIGN.md "Board time")
    link_baud: float = Field(3e6, gt=0, description="nominal rate of the host link, symbols per second")
    link_bits_per_byte: float = Field(10.0, gt=0, description="symbols per byte on the link (UART 8N1: 10)")
    t_link_turnaround_sec: float = Field(250e-6, ge=0, description="per-command latency of the host link (USB-serial "
                                                                 "turnaround), on every executed request")
    t_command_sec: float = Field(20e-6, ge=0, description="per-operation set-up time of the array controller")
    t_pulse_gap_sec: float = Field(50e-9, ge=0, description="idle time between two pulses")
    t_vmm_sec: float = Field(1e-6, ge=0, description="time of one VMM input vector (all columns in parallel)")
    t_read_row_sec: float = Field(1e-6, ge=0, description="time to read one row of cells in parallel")

    @model_validator(mode="after")
    def _consistent(self) -> "DeviceParams":
        if self.g_min_s >= self.g_max_s:
            raise ValueError(f"g_min_s ({self.g_min_s}) must be below g_max_s ({self.g_max_s})")
        if not self.g_min_s <= self.g_init_s <= self.g_max_s:
            raise ValueError("g_init_s must lie inside the window [g_min_s, g_max_s]")
        if self.v_set_threshold_v >= self.v_set_nominal_v:
            raise ValueError("v_set_threshold_v must be below v_set_nominal_v")
        if self.v_reset_threshold_v <= self.v_reset_nominal_v:
            raise ValueError("v_reset_threshold_v must be above (less negative than) v_reset_nominal_v")
        return self

    @property
    def alpha_reset_s(self) -> float:
        return self.reset_asymmetry * self.alpha_set_s


def preset_names() -> list[str]:
    """Names of the device presets shipped with the package (``firmware_stub/presets/*.toml``)."""
    return sorted(p.name[:-5] for p in resources.files("firmware_stub.presets").iterdir() if p.name.endswith(".toml"))


def _fields_of(text: str, where: str) -> dict:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where} is not valid TOML: {exc}") from None
    return data.get("device", data)


def preset_fields(name: str) -> dict:
    """The fields a shipped preset sets (only those: the rest keep :class:`DeviceParams`' defaults)."""
    if name not in preset_names():
        raise ValueError(f"unknown device preset {name!r}; choose one of {', '.join(preset_names())}")
    return _fields_of(resources.files("firmware_stub.presets").joinpath(f"{name}.toml").read_text(),
                      f"device preset {name}")


def load_device_params(path: str | Path | None = None, preset: str = "default") -> DeviceParams:
    """A preset's parameters, overridden field by field by a TOML file; a clear error names the
    preset, the file and the bad field."""
    data = preset_fields(preset)
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ValueError(f"device parameter file {path} does not exist") from None
        data = {**data, **_fields_of(text, f"device parameter file {path}")}
    try:
        return DeviceParams(**data)
    except ValidationError as exc:
        # one line, in the form of drivers.limits.validation_summary (firmware_stub imports nothing above protocols)
        summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                            for e in exc.errors())
        where = f"device parameter file {path} (over preset {preset})" if path is not None else f"device preset {preset}"
        raise ValueError(f"{where}: {summary}") from None
