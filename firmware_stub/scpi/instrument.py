"""Base classes of the emulated instruments: command log, error queue, IEEE 488.2 common commands.

:class:`EmulatedInstrument` is what every emulator shares: it receives one program
message (a line) at a time through :meth:`process`, logs it (list + ``logging`` at
DEBUG), holds the error/event queue (FIFO; when full, the newest entry becomes
``-350 Queue overflow``) and the standard event status register, and answers the
common commands ``*IDN? *OPT? *RST *CLS *OPC *OPC? *WAI *ESR? *ESE *ESE? *SRE *SRE? *STB?
*TST? *TRG``.

:class:`ScpiInstrument` adds the SCPI command tree: handlers are methods decorated with
:func:`scpi` and a header pattern from the manual; the compound-command path rule,
short/long forms, optional nodes and numeric suffixes are handled by
:mod:`protocols.scpi`.  Every SCPI emulator also understands the standard
``:SYSTem:ERRor[:NEXT]?``, ``:SYSTem:ERRor:COUNt?``, ``:SYSTem:ERRor:ALL?``,
``:SYSTem:VERSion?`` and ``:STATus:PRESet``, and a vendor-specific ``:EMULation``
subsystem that no real instrument has (a real one answers ``-113 Undefined header``):

=========================  ==========================================================
``:EMULation:CLOCk?``      the bench's (virtual) clock, seconds
``:EMULation:WAIT <s>``    advance the virtual clock by ``s`` at once
``:EMULation:TRUTh?``      the array's true parameters, one line of JSON
``:EMULation:STATus? [DIGest]``  running totals (and the state digest), JSON
=========================  ==========================================================
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable, ClassVar

from firmware_stub.scpi.bench import EmulatedBench
from firmware_stub.scpi.settings import Setting
from protocols.scpi import (
    ScpiError,
    Unit,
    compile_pattern,
    fmt_float,
    match_pattern,
    parse_bool,
    parse_choice,
    parse_number,
    parse_unit,
    split_outside_quotes,
    tokenize_header,
    unquote,
)

ESR_OPC, ESR_QYE, ESR_DDE, ESR_EXE, ESR_CME = 1, 4, 8, 16, 32
STB_EAV, STB_MAV, STB_ESB = 4, 16, 32


def scpi(pattern: str, *, query: bool = True, write: bool = True) -> Callable:
    """Mark a method as the handler of a header pattern (query and/or command form)."""

    def deco(fn):
        fn.__dict__.setdefault("_scpi", []).append((pattern, query, write))
        return fn

    return deco


@dataclass
class Call:
    """One parsed unit handed to a handler."""

    header: str
    query: bool
    params: list[str]
    suffixes: list[int | None]

    def suffix(self, node: int, valid: tuple[int, ...] = (1,)) -> int:
        s = self.suffixes[node]
        s = 1 if s is None else s
        if s not in valid:
            raise ScpiError(-114, f"{self.header}: suffix {s} not in {valid}")
        return s

    def count(self, lo: int, hi: int | None = None) -> None:
        hi = lo if hi is None else hi
        if len(self.params) < lo:
            raise ScpiError(-109, self.header)
        if len(self.params) > hi:
            raise ScpiError(-108, self.header)

    def number(self, i: int = 0, nmax: int | None = None, **kw) -> float:
        self.count(i + 1, nmax or i + 1)
        kw.setdefault("name", self.header)
        return parse_number(self.params[i], **kw)

    def boolean(self, i: int = 0, nmax: int | None = None) -> bool:
        self.count(i + 1, nmax or i + 1)
        return parse_bool(self.params[i])

    def choice(self, i: int, choices: dict[str, str], nmax: int | None = None) -> str:
        self.count(i + 1, nmax or i + 1)
        return parse_choice(self.params[i], choices)

    def string(self, i: int = 0, nmax: int | None = None) -> str:
        self.count(i + 1, nmax or i + 1)
        return unquote(self.params[i])


class EmulatedInstrument:
    """Log, error queue and common commands of one emulated instrument on the shared bench."""

    kind: ClassVar[str] = "instrument"
    manufacturer: ClassVar[str] = "EMULATED"
    model: ClassVar[str] = "NONE"
    firmware: ClassVar[str] = "0"
    #: the ``*OPT?`` reply: installed options (``"0"``: none, the IEEE 488.2 convention)
    options: ClassVar[str] = "0"
    error_queue_size: ClassVar[int] = 10
    signed_error_codes: ClassVar[bool] = False  # '+0,"No error"' (Keysight) or '0,"No error"'
    t_command_sec: ClassVar[float] = 50e-6  # per program message, on the virtual clock

    def __init__(self, bench: EmulatedBench, serial_number: str = "0000001"):
        self.bench = bench
        self.serial_number = serial_number
        self.log: list[str] = []
        self.logger = logging.getLogger(f"firmware_stub.scpi.{self.kind}")
        self._errors: deque[tuple[int, str]] = deque()
        self.esr = 0
        self.ese = 0
        self.sre = 0
        self._fault: list | None = None
        bench.register(self.kind, self)
        self.reset()

    # ---- identity ------------------------------------------------------------------------------
    @property
    def idn(self) -> str:
        return f"{self.manufacturer},{self.model},{self.serial_number},{self.firmware}"

    # ---- entry point -----------------------------------------------------------------------------
    def process(self, line: str) -> str | None:
        """Execute one program message; the response message (without terminator), or None."""
        line = line.strip("\r\n")
        with self.bench.lock:
            self.log.append(line)
            self.logger.debug("<< %s", line)
            self.bench.sync_clock()
            self._maybe_fault()
            try:
                out = self.execute(line)
            finally:
                self.bench.advance(self.t_command_sec)
            if out is not None:
                self.logger.debug(">> %s", out)
            return out

    def execute(self, line: str) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- error queue --------------------------------------------------------------------------------
    def push_error(self, code: int, text: str) -> None:
        if code <= -100 and code > -200:
            self.esr |= ESR_CME
        elif code <= -200 and code > -300:
            self.esr |= ESR_EXE
        elif code <= -400 and code > -500:
            self.esr |= ESR_QYE
        else:
            self.esr |= ESR_DDE
        self.logger.info("error %d,%s", code, text)
        if len(self._errors) >= self.error_queue_size:
            self._errors[-1] = (-350, "Queue overflow")
        else:
            self._errors.append((code, text))

    def pop_error(self) -> tuple[int, str]:
        return self._errors.popleft() if self._errors else (0, "No error")

    @property
    def error_count(self) -> int:
        return len(self._errors)

    def format_error(self, code: int, text: str) -> str:
        return f'{code:+d},"{text}"' if self.signed_error_codes else f'{code},"{text}"'

    def stb(self) -> int:
        value = self.sre & 0  # no service requests emulated
        if self._errors:
            value |= STB_EAV
        if self.esr & self.ese:
            value |= STB_ESB
        return value

    # ---- state ----------------------------------------------------------------------------------------
    def reset(self) -> None:
        """*RST: instrument defaults (the error queue is kept, as IEEE 488.2 requires)."""

    def clear_status(self) -> None:
        self._errors.clear()
        self.esr = 0

    def outputs_off(self) -> None:
        """Turn every output off (interlock, fault)."""

    def driven_level_v(self) -> float:
        """The level this instrument drives into its matrix terminals now (0 when off or idle)."""
        return 0.0

    def trigger(self) -> None:
        """*TRG: a bus trigger."""

    def inject_fault(self, code: int, message: str, outputs_off: bool = True) -> None:
        """Test hook: an instrument fault -- an error in the queue and, by default, the outputs off."""
        with self.bench.lock:
            if outputs_off:
                self.outputs_off()
            self.push_error(code, message)

    def fault_after(self, n_messages: int, code: int, message: str, outputs_off: bool = True) -> None:
        """Test hook: :meth:`inject_fault` just before the program message after the next ``n_messages``."""
        with self.bench.lock:
            self._fault = [int(n_messages), code, message, outputs_off]

    def _maybe_fault(self) -> None:
        if self._fault is None:
            return
        if self._fault[0] <= 0:
            _, code, message, off = self._fault
            self._fault = None
            self.inject_fault(code, message, off)
        else:
            self._fault[0] -= 1

    # ---- common commands ---------------------------------------------------------------------------------
    def common(self, unit: Unit) -> str | None:
        name = unit.header.upper()
        q = unit.query
        if name == "*IDN" and q:
            return self.idn
        if name == "*OPT" and q:
            return self.options
        if name == "*RST" and not q:
            self.reset()
            return None
        if name == "*CLS" and not q:
            self.clear_status()
            return None
        if name == "*OPC":
            if q:
                return "1"
            self.esr |= ESR_OPC
            return None
        if name == "*WAI" and not q:
            return None
        if name == "*ESR" and q:
            value, self.esr = self.esr, 0
            return str(value)
        if name in ("*ESE", "*SRE"):
            attr = name[1:].lower()
            if q:
                return str(getattr(self, attr))
            if len(unit.params) != 1:
                raise ScpiError(-109 if not unit.params else -108, name)
            setattr(self, attr, int(parse_number(unit.params[0], minimum=0, maximum=255, name=name)))
            return None
        if name == "*STB" and q:
            return str(self.stb())
        if name == "*TST" and q:
            return "0"
        if name == "*TRG" and not q:
            self.trigger()
            return None
        raise ScpiError(-113, f"{unit.header}{'?' if q else ''}")


class ScpiInstrument(EmulatedInstrument):
    """An emulated SCPI instrument: a command tree of :func:`scpi` handlers."""

    #: (nodes, handler method name or :class:`Setting`, query form, command form), in match order
    _table: ClassVar[list[tuple[tuple, str | Setting, bool, bool]]] = []
    #: the settable parameters whose handling is generated (:mod:`firmware_stub.scpi.settings`)
    settings: ClassVar[tuple[Setting, ...]] = ()
    #: False makes the :EMULation subsystem undefined (-113), as on a real instrument (tests)
    vendor_commands: bool = True

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        table: list[tuple[tuple, str | Setting, bool, bool]] = []
        seen = set()
        for klass in cls.__mro__:
            for name, fn in vars(klass).items():
                if name in seen:
                    continue
                for pattern, q, w in getattr(fn, "_scpi", ()):
                    table.append((compile_pattern(pattern), name, q, w))
            seen.update(vars(klass))
        table += [(compile_pattern(s.pattern), s, True, True) for s in cls.settings]
        cls._table = table

    @staticmethod
    def format_number(value: float) -> str:
        """A number in a query reply (the instrument's own format)."""
        return fmt_float(value)

    def execute(self, line: str) -> str | None:
        responses: list[str] = []
        prefix: list[str] = []
        try:
            units = split_outside_quotes(line, ";")
        except ScpiError as exc:
            self.push_error(exc.code, exc.text)
            return None
        for raw in units:
            try:
                unit = parse_unit(raw)
                if unit is None:
                    continue
                if unit.common:
                    out = self.common(unit)
                else:
                    parts = unit.parts if (unit.absolute or not prefix) else prefix + unit.parts
                    out = self._dispatch(parts, unit)
                    prefix = parts[:-1]
                if unit.query:
                    responses.append("" if out is None else out)
            except ScpiError as exc:
                self.push_error(exc.code, exc.text)
                if exc.is_command_error:
                    break  # the parser discards the rest of the message
            except Exception as exc:  # an emulator bug must still leave a trace the host can read
                self.logger.exception("emulator fault on %r", raw)
                self.push_error(-310, f"System error;{exc!r}"[:120])
        return ";".join(responses) if responses else None

    def _dispatch(self, parts: list[str], unit: Unit) -> str | None:
        tokens = tokenize_header(parts)
        for nodes, handler, q_ok, w_ok in self._table:
            suffixes = match_pattern(nodes, tokens)
            if suffixes is None:
                continue
            if (unit.query and not q_ok) or (not unit.query and not w_ok):
                raise ScpiError(-113, f"{':'.join(parts)}{'?' if unit.query else ''} has no "
                                      f"{'query' if unit.query else 'command'} form")
            if isinstance(handler, str) and handler.startswith("_emul") and not self.vendor_commands:
                break
            call = Call(":".join(parts), unit.query, unit.params, suffixes)
            if isinstance(handler, Setting):
                return handler.handle(self, call)
            return getattr(self, handler)(call)
        raise ScpiError(-113, ":".join(parts) + ("?" if unit.query else ""))

    # ---- standard SCPI ------------------------------------------------------------------------------------
    @scpi(":SYSTem:ERRor[:NEXT]", write=False)
    def _syst_err(self, c: Call) -> str:
        return self.format_error(*self.pop_error())

    @scpi(":SYSTem:ERRor:COUNt", write=False)
    def _syst_err_count(self, c: Call) -> str:
        return str(self.error_count)

    @scpi(":SYSTem:ERRor:ALL", write=False)
    def _syst_err_all(self, c: Call) -> str:
        items = []
        while self._errors:
            items.append(self.format_error(*self.pop_error()))
        return ",".join(items) if items else self.format_error(0, "No error")

    @scpi(":SYSTem:VERSion", write=False)
    def _syst_version(self, c: Call) -> str:
        return "1999.0"

    @scpi(":STATus:PRESet", query=False)
    def _stat_preset(self, c: Call) -> None:
        return None

    @scpi(":SYSTem:BEEPer[:IMMediate]", query=False)
    def _beep(self, c: Call) -> None:
        return None

    # ---- vendor: the emulation subsystem --------------------------------------------------------------------
    @scpi(":EMULation:CLOCk", write=False)
    def _emul_clock(self, c: Call) -> str:
        return repr(self.bench.clock_sec)

    @scpi(":EMULation:WAIT", query=False)
    def _emul_wait(self, c: Call) -> None:
        seconds = c.number(0, minimum=0.0, maximum=1e9, name="wait")
        try:
            self.bench.wait(seconds)
        except ValueError as exc:
            raise ScpiError(-221, str(exc)) from None

    @scpi(":EMULation:TRUTh", write=False)
    def _emul_truth(self, c: Call) -> str:
        return json.dumps(self.bench.true_parameters(), separators=(",", ":"))

    @scpi(":EMULation:STATus", write=False)
    def _emul_status(self, c: Call) -> str:
        digest = bool(c.params) and c.choice(0, {"DIGest": "DIG"}) == "DIG"
        return json.dumps(self.bench.status(with_digest=digest), separators=(",", ":"))


def fmt(x: float) -> str:
    return fmt_float(x)
