"""The pulse law and the energy bookkeeping of the emulated array, shared with the reference loop.

:func:`pulse_scale` is the step multiplier of a pulse of a given amplitude and width;
:func:`write_periphery_energy_j` the periphery energy of a write event (docs/ENERGY.md);
:class:`PulseOutcome` the record of one pulse batch and :class:`ArrayCounters` the array's running totals.
"""

from __future__ import annotations

from dataclasses import dataclass

from firmware_stub.device_params import DeviceParams


@dataclass(frozen=True)
class PulseOutcome:
    """Result of one pulse batch: ``energy_j`` is the whole write energy, ``periphery_energy_j`` its
    periphery part (fixed energy per device written plus line charging); the rest went through the devices."""

    set_pulses: int
    reset_pulses: int
    energy_j: float
    duration_sec: float
    periphery_energy_j: float = 0.0


@dataclass
class ArrayCounters:
    """Running totals since construction (or :meth:`MemristorArray.reset_counters`).

    ``write_events_total`` counts device write events (one per touched device per
    pulse batch); ``write_energy_j`` is ``write_device_energy_j + write_periphery_energy_j``;
    ``read_energy_j`` covers both cell reads and VMM (``V^2 G t_read`` per cell); converter
    energies are booked per conversion (docs/ENERGY.md).
    """

    pulses_total: int = 0
    set_pulses_total: int = 0
    reset_pulses_total: int = 0
    write_events_total: int = 0
    write_energy_j: float = 0.0
    write_device_energy_j: float = 0.0
    write_periphery_energy_j: float = 0.0
    read_energy_j: float = 0.0
    adc_energy_j: float = 0.0
    adc_conversions_total: int = 0
    dac_energy_j: float = 0.0
    dac_conversions_total: int = 0
    cells_read_total: int = 0
    vmm_calls_total: int = 0
    vmm_vectors_total: int = 0


def pulse_scale(params: DeviceParams, amplitude_v: float, width_sec: float) -> float:
    """Step multiplier of a pulse relative to the nominal pulse of its polarity.

    ``((|V|-|Vth|)/(|Vnom|-|Vth|))**amplitude_exponent * (width/width_nominal)``; zero
    at or below threshold.  The polarity is the sign of ``amplitude_v``.
    """
    if amplitude_v > 0:
        v_th, v_nom = params.v_set_threshold_v, params.v_set_nominal_v
    else:
        v_th, v_nom = params.v_reset_threshold_v, params.v_reset_nominal_v
    over_v = abs(amplitude_v) - abs(v_th)
    if over_v <= 0:
        return 0.0
    ratio = over_v / (abs(v_nom) - abs(v_th))
    return ratio**params.amplitude_exponent * (width_sec / params.width_nominal_sec)


def write_periphery_energy_j(params: DeviceParams, n_devices: int, pulses_at: list[tuple[float, int]]) -> float:
    """Periphery energy of a write event on ``n_devices`` devices: a fixed energy per device
    written plus ``C V^2`` line charging per pulse (``pulses_at``: (amplitude_v, pulses) pairs)."""
    line = sum(amplitude_v**2 * n for amplitude_v, n in pulses_at)
    return params.write_periphery_energy_j * n_devices + params.line_capacitance_f * line


def check_profile_polarity(profile: tuple[float, float], polarity: int) -> tuple[float, float]:
    """``(amplitude_v, width_sec)`` as floats; SET amplitude must be > 0, RESET < 0."""
    amplitude_v, width_sec = (float(x) for x in profile)
    if polarity > 0 and not amplitude_v > 0:
        raise ValueError(f"SET amplitude must be > 0 V, got {amplitude_v}")
    if polarity < 0 and not amplitude_v < 0:
        raise ValueError(f"RESET amplitude must be < 0 V, got {amplitude_v}")
    if not width_sec > 0:
        raise ValueError(f"pulse width must be > 0 s, got {width_sec}")
    return amplitude_v, width_sec
