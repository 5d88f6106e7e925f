"""The VISA bench's instruments: their ratings as limits, the bench's hardware limits, the VISA
library, and the cleanup steps that end every bench operation (see :mod:`drivers.visa_bench`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from drivers.bench_file import BenchFile
from drivers.errors import LinkError
from drivers.instruments.keithley2450 import I_RANGES
from drivers.instruments.keysight33500b import MAX_BURST, MAX_OPEN_CIRCUIT_V
from drivers.instruments.scpi_property import VisaInstrument
from drivers.limits import DEVICE_SAFE_LIMITS, SafetyLimits, effective_limits

log = logging.getLogger("drivers.visa_bench")

LINE_FREQUENCY_HZ = 50.0
#: the 2450's integration range; a DC level (sweep step, forming) lasts one reading
SMU_NPLC_RANGE = (0.01, 10.0)

#: What the instruments themselves can do (2450: 1.05 A, 210 V; 33500B: +-10 V open circuit,
#: 16 ns pulses -- 20 ns with the fastest 8.4 ns edges; 10^8 pulses per burst).
INSTRUMENT_LIMITS = SafetyLimits(
    max_set_v=MAX_OPEN_CIRCUIT_V, max_reset_v=MAX_OPEN_CIRCUIT_V, max_read_v=21.0, max_form_v=MAX_OPEN_CIRCUIT_V,
    compliance_a=1.05,
    min_pulse_width_sec=20e-9, max_pulse_width_sec=1.0, max_pulses_per_batch=10**9,
    max_pulses_per_device=MAX_BURST,
)


def bench_hardware_limits(config: BenchFile, path: str | Path | None = None) -> SafetyLimits:
    """The bench's hardware limits: the bench file's ``[limits]`` (device-safe defaults for the fields it
    leaves out) tightened by the instruments' ratings.

    A stated value beyond an instrument's rating is not used (logged at INFO: the instrument
    cannot exceed its rating anyway); a stated pulse-width
    window outside the generator's is a :class:`~drivers.errors.LimitConflict`.
    """
    given = config.limits.model_dump(include=config.limits.model_fields_set) if config.limits else {}
    stated = SafetyLimits(**{**DEVICE_SAFE_LIMITS.model_dump(), **given})
    where = f"the bench file{f' {path}' if path else ''}'s [limits]"
    return effective_limits(stated, INSTRUMENT_LIMITS, user_label=where, hardware_label="the instruments' ratings",
                            explicit=frozenset(given), warn=logging.INFO).limits


def open_resource_manager(library: str) -> Any:
    import pyvisa

    try:
        return pyvisa.ResourceManager(library)
    except Exception as exc:
        raise LinkError(f"cannot start the VISA library {library!r}: {exc}") from None


def pick_current_range(value: float) -> float:
    for r in I_RANGES:
        if value <= r * (1 + 1e-9):
            return r
    return I_RANGES[-1]


def shutdown_instrument(inst: VisaInstrument) -> None:
    """Safe state of one instrument; after a link failure, reconnect once first."""
    if inst.link_suspect:
        try:
            inst.reconnect()
        except LinkError as exc:
            log.error("%s: reconnecting failed: %s", inst.label, exc)
            raise
    inst.shutdown()


def quiet(fn) -> Any:
    """Call ``fn`` in a cleanup path: failures are logged, not raised (the first error wins)."""
    try:
        return fn()
    except Exception as exc:
        log.warning("cleanup step %s failed: %s", getattr(fn, "__name__", fn), exc)
        return None
