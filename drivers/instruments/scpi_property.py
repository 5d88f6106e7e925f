"""The declarative part of the instrument drivers: a settings descriptor and the VISA instrument base.

:class:`InstrumentProperty` turns one instrument setting into a Python attribute::

    class Keithley2450(VisaInstrument):
        current_limit = InstrumentProperty(":SOUR:VOLT:ILIM?", ":SOUR:VOLT:ILIM {}", units="A",
                                           validator=in_range(1e-9, 1.05), doc="compliance")

    smu.current_limit = 1e-3      # validated, then ':SOUR:VOLT:ILIM 1.000000e-03' is written
    smu.current_limit             # ':SOUR:VOLT:ILIM?' is queried and parsed

The validator runs before anything is written: a value outside the instrument's
range raises :class:`~drivers.errors.LimitViolation` and the instrument receives
nothing.  Command strings may use ``{ch}`` (the instrument's channel).  Numbers are
written in NR3 (``1.000000e-03``), booleans as ``ON``/``OFF``.

:class:`VisaInstrument` wraps one pyvisa message-based resource: ``write``/``query``
with raw traffic logged at DEBUG, byte counters, typed errors (a timeout is
:class:`~drivers.errors.BoardTimeout`, a refused or dropped connection
:class:`~drivers.errors.LinkError`), identity check (``*IDN?`` against the model the
driver is written for: a different instrument is refused with
:class:`IdentityError`), the error queue (:meth:`VisaInstrument.errors`,
:meth:`VisaInstrument.check_errors` raising :class:`~drivers.errors.InstrumentError`),
resynchronisation after an interrupted exchange, and :meth:`VisaInstrument.reconnect`
for putting an instrument in a safe state after its link dropped.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from drivers.errors import BoardTimeout, InstrumentError, LimitViolation, LinkError

log = logging.getLogger("drivers.instruments")


class IdentityError(InstrumentError):
    """The instrument at a resource is not the model its driver is written for."""


# ---- validators -------------------------------------------------------------------------------
def in_range(lo: float, hi: float) -> Callable[[str, Any], None]:
    def check(label: str, value: Any) -> None:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise LimitViolation(f"{label}: {value!r} is not a number") from None
        if not lo <= v <= hi:
            raise LimitViolation(f"{label}: {v:g} is outside the instrument's range [{lo:g}, {hi:g}]")
    check.__doc__ = f"in [{lo:g}, {hi:g}]"
    return check


def one_of(*values: Any) -> Callable[[str, Any], None]:
    def check(label: str, value: Any) -> None:
        if value not in values:
            raise LimitViolation(f"{label}: {value!r} is not one of {', '.join(map(str, values))}")
    check.__doc__ = f"one of {values}"
    return check


# ---- value codecs --------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "ON" if value else "OFF"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6e}"
    return str(value)


def parse_bool(text: str) -> bool:
    t = text.strip().strip('"').upper()
    if t in ("1", "ON", "TRUE"):
        return True
    if t in ("0", "OFF", "FALSE"):
        return False
    return float(t) != 0


def parse_text(text: str) -> str:
    return text.strip().strip('"').strip("'")


_PARSERS: dict[Any, Callable[[str], Any]] = {
    float: lambda t: float(t.strip()),
    int: lambda t: int(round(float(t.strip()))),
    bool: parse_bool,
    str: parse_text,
}


class InstrumentProperty:
    """One instrument setting: query string, command template, type, validator, units."""

    def __init__(self, get: str | None, set: str | None = None, *, kind: type = float,
                 validator: Callable[[str, Any], None] | None = None, units: str = "", doc: str = "",
                 parse: Callable[[str], Any] | None = None, snapshot: bool = True):
        self.get_cmd, self.set_cmd = get, set
        self.snapshot = snapshot and get is not None  # part of the instrument's settings snapshot
        self.kind = kind
        self.validator = validator
        self.units = units
        self.parse = parse or _PARSERS[kind]
        self.__doc__ = doc + (f" [{units}]" if units else "") + (
            f"; {validator.__doc__}" if validator is not None and validator.__doc__ else "")
        self.name = "?"

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, inst: "VisaInstrument | None", owner: type) -> Any:
        if inst is None:
            return self
        if self.get_cmd is None:
            raise AttributeError(f"{self.name} cannot be read back from the instrument")
        command = self.get_cmd.format(**inst.command_fields)
        reply = inst.query(command)
        try:
            return self.parse(reply)
        except (ValueError, TypeError, KeyError):
            raise InstrumentError(f"{inst.label} at {inst.resource_name} answered {command!r} with {reply!r}, "
                                  f"which is not a valid {self.name}: check that the resource is the right "
                                  "instrument and its command set") from None

    def __set__(self, inst: "VisaInstrument", value: Any) -> None:
        if self.set_cmd is None:
            raise AttributeError(f"{self.name} is read-only")
        if self.kind in (float, int) and not isinstance(value, bool):
            value = self.kind(value)
        label = f"{inst.label} {self.name}" + (f" ({self.units})" if self.units else "")
        if self.validator is not None:
            self.validator(label, value)
        inst.write(self.set_cmd.format(format_value(value), **inst.command_fields))


@dataclass(frozen=True)
class Identity:
    manufacturer: str
    model: str
    serial_number: str
    firmware: str

    @classmethod
    def parse(cls, idn: str) -> "Identity":
        parts = [p.strip() for p in idn.split(",")]
        parts += [""] * (4 - len(parts))
        return cls(parts[0], parts[1], parts[2], ",".join(parts[3:]).strip(","))


class VisaInstrument:
    """A pyvisa message-based resource with typed errors, traffic log, identity and error queue."""

    label: ClassVar[str] = "instrument"
    idn_pattern: ClassVar[re.Pattern] = re.compile(".*")
    expected_model: ClassVar[str] = "any"

    def __init__(self, resource: Any, *, resource_manager: Any = None, check_identity: bool = True,
                 channel: int = 1):
        self._res = resource
        self._rm = resource_manager
        self.resource_name = str(getattr(resource, "resource_name", resource))
        self.channel = channel
        self.bytes_tx = 0
        self.bytes_rx = 0
        self.messages = 0
        self._dirty = False  # an exchange was interrupted: a stale reply or a partial line may be pending
        self._suspect = False  # the link failed (timeout, refused, dropped) and has not answered since
        self.identity: Identity | None = None
        if check_identity:
            self.identity = self.check_identity()

    # ---- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, resource_manager: Any, resource_name: str, *, timeout_sec: float = 2.0, **kw: Any):
        """Open ``resource_name`` (newline-terminated) and check the instrument's identity."""
        res = _open_resource(resource_manager, resource_name, timeout_sec, cls.label)
        try:
            return cls(res, resource_manager=resource_manager, **kw)
        except BaseException:
            try:
                res.close()
            except Exception:
                pass
            raise

    def reconnect(self, timeout_sec: float | None = None) -> None:
        """Drop the session and open a new one (after a lost link; the instrument keeps its state)."""
        if self._rm is None:
            raise LinkError(f"{self.label} at {self.resource_name}: cannot reconnect without a resource manager")
        timeout = timeout_sec if timeout_sec is not None else self._res.timeout / 1000.0
        try:
            self._res.close()
        except Exception:
            pass
        self._res = _open_resource(self._rm, self.resource_name, timeout, self.label)
        self._dirty = False
        self._suspect = False

    @property
    def command_fields(self) -> dict[str, Any]:
        return {"ch": self.channel}

    @property
    def link_suspect(self) -> bool:
        """True after a failed exchange until the instrument answers again (or is reconnected)."""
        return self._suspect or self._dirty

    @property
    def timeout_sec(self) -> float:
        return self._res.timeout / 1000.0

    # ---- traffic --------------------------------------------------------------------------------------
    def _fail(self, exc: BaseException, what: str) -> BaseException:
        import pyvisa

        self._dirty = True
        self._suspect = True
        where = f"{self.label} at {self.resource_name}"
        if isinstance(exc, pyvisa.errors.VisaIOError) and exc.error_code == pyvisa.constants.StatusCode.error_timeout:
            return BoardTimeout(f"{where} did not answer {what} within {self.timeout_sec:g} s: the instrument "
                                "hung or the connection was lost")
        return LinkError(f"{where}: {what} failed: {exc}")

    def _prepare(self) -> None:
        if self._dirty:
            self.resync()

    def write(self, command: str) -> None:
        self._prepare()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s << %s", self.label, command)
        try:
            self._res.write(command)
        except KeyboardInterrupt:
            self._dirty = True
            raise
        except Exception as exc:
            raise self._fail(exc, f"writing {command!r}") from None
        self.bytes_tx += len(command) + 1
        self.messages += 1

    def query(self, command: str) -> str:
        self.write(command)
        try:
            reply = self._res.read()
        except KeyboardInterrupt:
            self._dirty = True
            raise
        except Exception as exc:
            raise self._fail(exc, f"the reply to {command!r}") from None
        self.bytes_rx += len(reply) + 1
        self._suspect = False
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s >> %s", self.label, reply)
        return reply.strip()

    def settings(self) -> dict[str, Any]:
        """The instrument's settings, as QCoDeS's snapshot: identity, then every readable setting of
        the driver (queried now; a setting whose query fails is recorded as ``None`` with the error)."""
        ident = self.identity
        out: dict[str, Any] = {"resource": self.resource_name, "driver": type(self).__name__,
                               "identity": None if ident is None else vars(ident).copy()}
        values: dict[str, Any] = {}
        for klass in reversed(type(self).__mro__):
            for name, prop in vars(klass).items():
                if isinstance(prop, InstrumentProperty) and prop.snapshot:
                    try:
                        values[name] = getattr(self, name)
                    except (InstrumentError, BoardTimeout) as exc:
                        values[name] = None
                        values.setdefault("_errors", {})[name] = str(exc)
                    if prop.units and values[name] is not None:
                        values.setdefault("_units", {})[name] = prop.units
        out["parameters"] = values
        return out

    def query_number(self, command: str) -> float:
        """``query`` parsed as a number; :class:`InstrumentError` (not a bare ValueError) if it is none."""
        reply = self.query(command)
        try:
            return float(reply.split(",")[0])
        except ValueError:
            raise InstrumentError(f"{self.label} at {self.resource_name} answered {command!r} with {reply!r}, "
                                  "which is not a number") from None

    def resync(self) -> None:
        """After an interrupted exchange: end any partial line and discard stale replies."""
        self._dirty = False
        try:
            self._res.write("")  # terminates a partially written line: an empty program message
            old = self._res.timeout
            self._res.timeout = 50
            try:
                for _ in range(100):
                    self._res.read()
            except Exception:
                pass
            finally:
                self._res.timeout = old
        except Exception as exc:
            self._dirty = True
            raise self._fail(exc, "resynchronising") from None

    # ---- identity and errors --------------------------------------------------------------------------
    def check_identity(self) -> Identity:
        idn = self.query("*IDN?")
        if not self.idn_pattern.search(idn):
            raise IdentityError(f"{self.resource_name} answers *IDN? with {idn!r}; the {self.label} driver "
                                f"expects a {self.expected_model}: check the resource in the bench file")
        return Identity.parse(idn)

    def next_error(self) -> tuple[int, str]:
        reply = self.query("SYST:ERR?")
        code, _, text = reply.partition(",")
        try:
            return int(code), text.strip().strip('"')
        except ValueError:
            raise InstrumentError(f"{self.label} answered SYST:ERR? with {reply!r}") from None

    def errors(self, max_entries: int = 64) -> list[tuple[int, str]]:
        """Drain the error queue."""
        out = []
        for _ in range(max_entries):
            code, text = self.next_error()
            if code == 0:
                break
            out.append((code, text))
        return out

    def check_errors(self, context: str = "") -> None:
        """Raise :class:`InstrumentError` (first code) if the instrument reports any error."""
        errs = self.errors()
        if errs:
            listing = "; ".join(f"{c},{t!r}" for c, t in errs)
            raise InstrumentError(f"{self.label} at {self.resource_name} reported {listing}"
                                  + (f" {context}" if context else ""), code=errs[0][0])

    def clear_status(self) -> None:
        self.write("*CLS")

    def reset(self) -> None:
        self.write("*RST")

    def operation_complete(self) -> None:
        if self.query("*OPC?").strip() not in ("1", "+1"):
            raise InstrumentError(f"{self.label}: unexpected *OPC? reply")

    def shutdown(self) -> None:
        """Put the instrument's outputs in a safe state (subclasses)."""

    def close(self) -> None:
        try:
            self._res.close()
        except Exception as exc:
            log.debug("%s: closing %s: %s", self.label, self.resource_name, exc)


def _open_resource(rm: Any, name: str, timeout_sec: float, label: str) -> Any:
    try:
        res = rm.open_resource(name, read_termination="\n", write_termination="\n",
                               timeout=int(timeout_sec * 1000), open_timeout=int(timeout_sec * 1000))
    except Exception as exc:
        raise LinkError(f"cannot open the {label} at {name}: {exc}. Check the VISA resource string and that "
                        "the instrument is powered and reachable") from None
    if "SOCKET" in name.upper():
        # small commands go out at once: without it a write followed by a query waits for a delayed ACK
        try:
            import pyvisa

            res.set_visa_attribute(pyvisa.constants.ResourceAttribute.tcpip_nodelay, True)
        except Exception as exc:  # not every VISA library offers the attribute
            log.debug("%s: TCP_NODELAY not set: %s", name, exc)
    return res
