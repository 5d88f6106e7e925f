"""The in-process emulator board (``emu``): the FPGA driver over an in-process link whose far end
is the emulated firmware -- the same codec, sessions and checks as a serial port, minus the OS.

This is the one module of ``drivers`` that imports ``firmware_stub`` (docs/DESIGN.md, Layers).
"""

from __future__ import annotations

from drivers.errors import AddressError
from drivers.fpga import FpgaBoard
from drivers.limits import SafetyLimits
from drivers.links import InProcessLink
from protocols.session import DEFAULT_WINDOW


def open_emulator_board(address: str, rows: int, cols: int, *, seed: int = 0, preset: str = "default",
                        config: str | None = None, limits: SafetyLimits | None = None, timeout_sec: float = 2.0,
                        retries: int = 5, window: int = DEFAULT_WINDOW) -> FpgaBoard:
    """A fresh emulated ``rows`` x ``cols`` array built from device ``preset`` (fields overridden by the
    TOML file ``config``), seeded with ``seed``; ``address`` is only recorded as the board's address."""
    from firmware_stub.device_params import load_device_params
    from firmware_stub.firmware import make_emulator

    try:
        params = load_device_params(config, preset)
    except ValueError as exc:
        raise AddressError(f"{address!r}: {exc}") from None
    endpoint = make_emulator(rows, cols, seed, params, preset=preset, config=config)
    return FpgaBoard(InProcessLink(endpoint), limits, timeout_sec=timeout_sec, retries=retries, address=address,
                     window=window)


def device_param_fields() -> set[str]:
    """Names of the emulated device's parameters (the fields a device TOML file may set)."""
    from firmware_stub.device_params import DeviceParams

    return set(DeviceParams.model_fields)


def device_file_text(preset: str = "default", config: str | None = None, overrides: dict | None = None) -> str:
    """A complete device TOML file: ``preset``, overridden by the file ``config``, then by ``overrides``.

    Raises ``ValueError`` (pydantic's ``ValidationError`` is one) naming a bad field or value."""
    from firmware_stub.device_params import DeviceParams, load_device_params

    params = load_device_params(config, preset)
    params = DeviceParams(**{**params.model_dump(), **(overrides or {})})
    return "".join(f"{k} = {v!r}\n" for k, v in sorted(params.model_dump().items()))
