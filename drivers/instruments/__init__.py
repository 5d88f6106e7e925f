"""VISA instrument drivers of the bench board: Keithley 2450 SMU, Keysight 33500B generator, Keithley 707B matrix.

Each driver checks the instrument's identity on open, validates every setting
against the instrument's ranges before writing it, reads the error queue after
configuring, logs raw traffic at DEBUG (logger ``drivers.instruments``) and raises
the typed errors of :mod:`drivers.errors`.
"""

from drivers.instruments.keithley707b import Keithley707B
from drivers.instruments.keithley2450 import Keithley2450
from drivers.instruments.keysight33500b import Keysight33500B
from drivers.instruments.scpi_property import IdentityError, InstrumentProperty, VisaInstrument, in_range, one_of

__all__ = ["Keithley2450", "Keysight33500B", "Keithley707B", "IdentityError", "InstrumentProperty",
           "VisaInstrument", "in_range", "one_of"]
