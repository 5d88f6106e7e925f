"""Physics-backed emulators of the VISA bench instruments, one TCP port each.

A Keithley 2450 SMU (SCPI), a Keysight 33500B-series waveform generator (SCPI) and a
Keithley 707B switch matrix (TSP) share one :class:`~firmware_stub.scpi.bench.EmulatedBench`:
one emulated memristor array, the matrix's routing and one clock.  The SMU measures
the devices routed to it through closed crosspoints at its sourced voltage, with
compliance clipping; the generator's bursts pulse the devices routed to it; nothing
reaches a device through an output that is off.  Modules:

``parser``        SCPI messages, header patterns, parameters, standard error codes
``instrument``    command log, error queue, common commands, the SCPI command tree
``bench``         wiring, routing, circuit physics, clock (virtual or wall)
``keithley2450``, ``keysight33500b``, ``keithley707b``   the instruments
``server``        one instrument on a raw TCP socket (``TCPIP::host::port::SOCKET``)
``serve_bench``   start all three and write the bench file (``hil emulator serve-bench``)
"""

from firmware_stub.scpi.bench import EmulatedBench, Wiring

__all__ = ["EmulatedBench", "Wiring"]
