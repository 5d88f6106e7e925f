"""Serve an emulated VISA bench -- SMU, pulse generator, switch matrix -- and write its bench file.

:func:`start_bench` builds one :class:`~firmware_stub.array_model.MemristorArray`, the
shared :class:`~firmware_stub.scpi.bench.EmulatedBench` and the three instrument
emulators, each on its own TCP port, in background threads.  :meth:`RunningBench.bench_toml`
is the matching bench file (``drivers.bench_file`` validates it on the host side), with a
``[limits]`` section stating the emulated devices' hardware limits explicitly (the same as
the emulated FPGA board's, :class:`~firmware_stub.firmware.HardwareLimits`), so
``open_board("visa:bench.toml")`` drives the emulated array through the real
instrument drivers, pyvisa-py and TCP.

Command line (the lead wires the same thing as ``hil emulator serve-bench``)::

    python -m firmware_stub.scpi.serve_bench --out bench.toml [--rows 8 --cols 8 --seed 0
        --config device.toml --host 127.0.0.1 --wall-clock]

prints the bench file path on stdout once the instruments listen and serves until
SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from firmware_stub.array_model import MemristorArray
from firmware_stub.device_params import DeviceParams
from firmware_stub.firmware import HardwareLimits
from firmware_stub.scpi.bench import EmulatedBench, Wiring
from firmware_stub.scpi.keithley707b import Keithley707B
from firmware_stub.scpi.keithley2450 import Keithley2450
from firmware_stub.scpi.keysight33500b import Keysight33500B
from firmware_stub.scpi.server import ScpiTcpServer

ROLES = ("smu", "pulse_generator", "switch_matrix")


@dataclass
class RunningBench:
    """The emulated bench and its three servers; a context manager that stops them."""

    bench: EmulatedBench
    smu: Keithley2450
    generator: Keysight33500B
    matrix: Keithley707B
    servers: dict[str, ScpiTcpServer]

    @property
    def array(self) -> MemristorArray:
        return self.bench.array

    @property
    def resources(self) -> dict[str, str]:
        return {role: s.resource for role, s in self.servers.items()}

    @property
    def instruments(self) -> dict[str, object]:
        return {"smu": self.smu, "pulse_generator": self.generator, "switch_matrix": self.matrix}

    def bench_toml(self, *, timeout_sec: float = 2.0, name: str | None = None, extra: str = "",
                   limits: dict[str, float] | None = None) -> str:
        """The bench file that describes this bench (emulated; virtual clock unless served on the wall clock).

        Its ``[limits]`` are the devices' hardware limits (:class:`HardwareLimits`), with ``limits``
        overriding single fields.
        """
        b, w = self.bench, self.bench.wiring
        a = b.array
        name = name or f"emulated bench {a.rows}x{a.cols} seed {a.seed}"
        lines = [
            "# VISA bench file written by `hil emulator serve-bench` (firmware_stub.scpi.serve_bench).",
            "# The instruments are SCPI/TSP emulators sharing one emulated memristor array.",
            "[bench]",
            f'name = "{name}"',
            f"rows = {a.rows}",
            f"cols = {a.cols}",
            'visa_library = "@py"',
            f"timeout_sec = {timeout_sec!r}",
            "emulated = true",
            f"virtual_clock = {'true' if b.virtual else 'false'}",
            "",
            "[smu]",
            f'resource = "{self.servers["smu"].resource}"',
            f"read_voltage_v = {a.params.read_voltage_v!r}",
            "current_range_a = 1e-4",
            "nplc = 1.0",
            'output_off_mode = "NORM"',
            "",
            "[pulse_generator]",
            f'resource = "{self.servers["pulse_generator"].resource}"',
            "channel = 1",
            "",
            "[switch_matrix]",
            f'resource = "{self.servers["switch_matrix"].resource}"',
            "",
            "[wiring]",
            f'smu_hi = "{w.smu_hi}"',
            f'smu_lo = "{w.smu_lo}"',
            f'pulse_hi = "{w.pulse_hi}"',
            f'pulse_lo = "{w.pulse_lo}"',
            f"word_lines = {list(w.word_lines)}",
            f"bit_lines = {list(w.bit_lines)}",
            f"columns_per_slot = {w.columns_per_slot}",
            "",
            "[limits]                      # what the emulated devices tolerate (a user --limits file only tightens)",
            *(f"{k} = {v!r}" for k, v in {**asdict(HardwareLimits()), **(limits or {})}.items()),
        ]
        return "\n".join(lines) + "\n" + extra

    def write_bench_file(self, path: str | Path, **kw) -> Path:
        path = Path(path)
        path.write_text(self.bench_toml(**kw))
        return path

    def stop(self) -> None:
        for s in self.servers.values():
            s.stop()

    def __enter__(self) -> "RunningBench":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_bench(rows: int = 8, cols: int = 8, seed: int = 0, params: DeviceParams | None = None, *,
                host: str = "127.0.0.1", clock_mode: str = "virtual", wiring: Wiring | None = None,
                ports: tuple[int, int, int] = (0, 0, 0)) -> RunningBench:
    """Build the emulated bench and start its three instrument servers (ports 0: free ones)."""
    array = MemristorArray(params or DeviceParams(), rows, cols, seed)
    bench = EmulatedBench(array, wiring or Wiring.default(rows, cols), clock_mode=clock_mode)
    tag = f"{seed:04d}"
    smu = Keithley2450(bench, serial_number=f"0450{tag}")
    gen = Keysight33500B(bench, serial_number=f"MY5{tag}")
    matrix = Keithley707B(bench, serial_number=f"0707{tag}")
    servers: dict[str, ScpiTcpServer] = {}
    try:
        for role, inst, port in zip(ROLES, (smu, gen, matrix), ports, strict=True):
            servers[role] = ScpiTcpServer(inst, host, port).start()
    except BaseException:
        for s in servers.values():
            s.stop()
        raise
    return RunningBench(bench, smu, gen, matrix, servers)


def serve_until_stopped(running: RunningBench, stop: threading.Event | None = None) -> None:
    """Block until SIGTERM, Ctrl-C or ``stop`` is set; then stop the servers."""
    stop = stop or threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
