"""Keithley 707B switching matrix (TSP), emulated on the shared bench.

The 707B is not programmed in SCPI but in TSP (Lua): every line the host sends is a
chunk of Lua statements.  This emulator runs the subset the stack and typical scripts
use, with the 707B's names and rules:

* ``channel.close(list)``, ``channel.open(list)``, ``channel.exclusiveclose(list)``,
  ``channel.exclusiveslotclose(list)``, ``channel.getclose(list)``,
  ``channel.reset(list)``, ``channel.getstate(list[, mask])`` (``channel.IND_CLOSED``),
  ``channel.getcount(list)`` (closures per relay since power-up),
  ``channel.setforbidden/clearforbidden/getforbidden(list)`` (closing a forbidden
  channel is an error and nothing switches), ``channel.connectrule`` (``channel.BREAK_BEFORE_MAKE``,
  ``channel.MAKE_BEFORE_BREAK``, ``channel.OFF``);
* channel lists: ``"1A01,1B05"`` (slot, row A-H, two-digit column 01-12 on 7174A-style
  cards), ranges ``"1A01:1C04"`` (the rectangle), ``"slot1"``, ``"allslots"``; a bad
  list is an error and nothing switches;
* ``errorqueue.count``, ``errorqueue.next()``, ``errorqueue.clear()``, ``reset()``,
  ``waitcomplete()``, ``opc()``, ``delay(s)``, ``print(...)``, ``localnode.model``,
  ``localnode.serialno``, ``localnode.revision``, ``slot[n].idn`` (``Empty Slot`` for
  slots 1..6 without a card);
* the IEEE 488.2 common commands (``*IDN?``, ``*RST``, ``*CLS``, ``*OPC?`` ...).

``print`` formats numbers as TSP does by default (``1.00000e+00``) and separates
several values with tabs; ``getclose`` returns the closed channels separated by ``;``
or ``nil``.  Errors: ``-285`` TSP syntax error, ``-286`` TSP runtime error, ``-222``
for a channel that does not exist.  Every change of relay state takes the relay
settling time on the virtual clock; the routing is the bench's, shared with the SMU
and generator emulators.

One module (about 450 lines) on purpose: the TSP statement parser, its namespaces
(``channel``, ``errorqueue``, ``localnode``, ``slot``) and the channel-list rules are one
interpreter whose parts only make sense together; none is used elsewhere.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from firmware_stub.scpi.bench import COLUMNS_PER_SLOT, MATRIX_ROWS, MAX_SLOTS
from firmware_stub.scpi.instrument import EmulatedInstrument
from protocols.scpi import ScpiError, parse_unit

RELAY_SETTLE_SEC = 1e-3
IND_CLOSED = 1
EMPTY_SLOT = "Empty Slot"
BREAK_BEFORE_MAKE, MAKE_BEFORE_BREAK, RULE_OFF = 1, 2, 0

_TOKEN = re.compile(r"""\s*(?:(?P<str>"[^"]*"|'[^']*')|(?P<num>\d+\.?\d*(?:[eE][+-]?\d+)?)|"""
                    r"""(?P<name>[A-Za-z_][A-Za-z_0-9]*)|(?P<op>[().,=\[\];\-]))""")
_CHANNEL = re.compile(r"^(\d)([A-Za-z])(\d{2})$")


class TspError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _syntax(msg: str) -> TspError:
    return TspError(-285, f"TSP Syntax error at line 1: {msg}")


def _runtime(msg: str) -> TspError:
    return TspError(-286, f"TSP Runtime error at line 1: {msg}")


def _tokens(text: str) -> list[tuple[str, str]]:
    text = re.sub(r"--.*$", "", text)
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            raise _syntax(f"unexpected symbol near '{text[pos:pos + 10].strip()}'")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Namespace:
    """A TSP table: attributes (read/write as declared) and functions."""

    def __init__(self, name: str, attrs: dict[str, Any], writable: dict[str, Callable[[Any], None]] | None = None):
        self.name = name
        self.attrs = attrs
        self.writable = writable or {}

    def get(self, key: str) -> Any:
        if key not in self.attrs:
            return None
        value = self.attrs[key]
        return value() if isinstance(value, _Getter) else value

    def set(self, key: str, value: Any) -> None:
        if key not in self.writable:
            raise _runtime(f"attempt to write read-only or unknown attribute '{self.name}.{key}'")
        self.writable[key](value)


class _Getter:
    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn

    def __call__(self) -> Any:
        return self.fn()


class Keithley707B(EmulatedInstrument):
    kind = "switch_matrix"
    manufacturer = "Keithley Instruments Inc."
    model = "Model 707B"
    firmware = "1.5.0a"
    error_queue_size = 32
    card = "7174A,8x12 High Speed Low Leakage Matrix,01.40h"

    @property
    def idn(self) -> str:
        return f"{self.manufacturer}, {self.model}, {self.serial_number}, {self.firmware}"

    def reset(self) -> None:
        self.connect_rule = BREAK_BEFORE_MAKE
        self.forbidden: set[tuple[str, int]] = set()
        if not hasattr(self, "close_counts"):
            self.close_counts: dict[tuple[str, int], int] = {}  # relay life: not cleared by a reset
        if hasattr(self, "bench"):
            self._switch(set(), set(self.bench.closed))
        self._build_env()

    def outputs_off(self) -> None:
        self._switch(set(), set(self.bench.closed))

    # ---- environment ------------------------------------------------------------------------
    def _build_env(self) -> None:
        def set_rule(v: Any) -> None:
            if v not in (BREAK_BEFORE_MAKE, MAKE_BEFORE_BREAK, RULE_OFF):
                raise _runtime("invalid connect rule")
            self.connect_rule = int(v)

        channel = _Namespace("channel", {
            "close": self._close, "open": self._open, "exclusiveclose": self._exclusive_close,
            "exclusiveslotclose": self._exclusive_slot_close, "getclose": self._getclose,
            "reset": self._channel_reset, "getstate": self._getstate, "getcount": self._getcount,
            "setforbidden": self._setforbidden, "clearforbidden": self._clearforbidden,
            "getforbidden": self._getforbidden, "IND_CLOSED": float(IND_CLOSED),
            "connectrule": _Getter(lambda: float(self.connect_rule)),
            "BREAK_BEFORE_MAKE": float(BREAK_BEFORE_MAKE), "MAKE_BEFORE_BREAK": float(MAKE_BEFORE_BREAK),
            "OFF": float(RULE_OFF),
        }, {"connectrule": set_rule})
        errorqueue = _Namespace("errorqueue", {
            "count": _Getter(lambda: float(self.error_count)),
            "next": self._error_next, "clear": self._error_clear,
        })
        localnode = _Namespace("localnode", {
            "model": "707B", "serialno": self.serial_number, "revision": self.firmware,
            "description": "Keithley Instruments Switch Matrix",
        })
        installed = self.bench.wiring.slots if hasattr(self, "bench") else 0
        slots = {float(i): _Namespace(f"slot[{i}]", {"idn": f"{self.card},{self.serial_number}-{i}"
                                                   if i <= installed else EMPTY_SLOT})
                 for i in range(1, MAX_SLOTS + 1)}
        self.env: dict[str, Any] = {
            "channel": channel, "errorqueue": errorqueue, "localnode": localnode, "slot": slots,
            "print": self._print, "reset": self._reset_fn, "waitcomplete": lambda: (), "opc": self._opc,
            "delay": self._delay, "nil": None, "true": True, "false": False,
        }

    # ---- entry -----------------------------------------------------------------------------------
    def execute(self, line: str) -> str | None:
        text = line.strip()
        if not text:
            return None
        if text.startswith("*"):
            try:
                unit = parse_unit(text)
                return self.common(unit) if unit else None
            except ScpiError as exc:
                self.push_error(exc.code, exc.text)
                return None
        self._out: list[str] = []
        try:
            self._run(_tokens(text))
        except TspError as exc:
            self.push_error(exc.code, exc.message)
        return "\n".join(self._out) if self._out else None

    # ---- interpreter --------------------------------------------------------------------------------
    def _run(self, toks: list[tuple[str, str]]) -> None:
        self._toks, self._pos = toks, 0
        while self._pos < len(self._toks):
            if self._peek() == ("op", ";"):
                self._pos += 1
                continue
            self._statement()

    def _peek(self) -> tuple[str, str] | None:
        return self._toks[self._pos] if self._pos < len(self._toks) else None

    def _next(self) -> tuple[str, str]:
        tok = self._peek()
        if tok is None:
            raise _syntax("unexpected end of line")
        self._pos += 1
        return tok

    def _expect(self, op: str) -> None:
        tok = self._next()
        if tok != ("op", op):
            raise _syntax(f"'{op}' expected near '{tok[1]}'")

    def _statement(self) -> None:
        kind, name = self._next()
        if kind != "name":
            raise _syntax(f"unexpected symbol near '{name}'")
        container, key, value = self._path(name)
        tok = self._peek()
        if tok == ("op", "("):
            self._call(value, key)
        elif tok == ("op", "="):
            self._pos += 1
            rhs = self._expr()
            if isinstance(container, _Namespace):
                container.set(key, rhs)
            else:
                raise _runtime(f"cannot assign to '{key}'")
        else:
            raise _syntax(f"syntax error near '{tok[1] if tok else '<eol>'}'")

    def _path(self, name: str) -> tuple[Any, str, Any]:
        container: Any = None
        key = name
        if name not in self.env:
            value = None
        else:
            value = self.env[name]
        while True:
            tok = self._peek()
            if tok == ("op", "."):
                self._pos += 1
                kind, attr = self._next()
                if kind != "name":
                    raise _syntax(f"<name> expected near '{attr}'")
                if not isinstance(value, _Namespace):
                    raise _runtime(f"attempt to index field '{key}' (a nil value)")
                container, key = value, attr
                value = value.get(attr)
            elif tok == ("op", "["):
                self._pos += 1
                index = self._expr()
                self._expect("]")
                if not isinstance(value, dict):
                    raise _runtime(f"attempt to index '{key}'")
                container, key = value, str(index)
                value = value.get(index)
            else:
                return container, key, value

    def _call(self, fn: Any, name: str) -> tuple:
        self._expect("(")
        args: list[Any] = []
        if self._peek() != ("op", ")"):
            while True:
                values = self._expr(multi=True)
                if self._peek() == ("op", ","):
                    args.append(values[0] if values else None)  # Lua: only the last call expands
                    self._pos += 1
                    continue
                args.extend(values)
                break
        self._expect(")")
        if not callable(fn) or isinstance(fn, _Getter):
            raise _runtime(f"attempt to call field '{name}' (a nil value)")
        result = fn(*args)
        return result if isinstance(result, tuple) else (result,)

    def _expr(self, multi: bool = False) -> Any:
        """One value; with ``multi`` a list (a function call yields all its results, as in Lua)."""
        kind, text = self._next()
        if kind == "str":
            value: Any = text[1:-1]
        elif kind == "num":
            value = float(text)
        elif (kind, text) == ("op", "-"):
            k2, t2 = self._next()
            if k2 != "num":
                raise _syntax("number expected after '-'")
            value = -float(t2)
        elif kind == "name":
            _, key, value = self._path(text)
            if self._peek() == ("op", "("):
                result = list(self._call(value, key))
                if multi:
                    return result
                return result[0] if result else None
        else:
            raise _syntax(f"unexpected symbol near '{text}'")
        return [value] if multi else value

    # ---- builtins ----------------------------------------------------------------------------------------
    def _print(self, *values: Any) -> tuple:
        self._out.append("\t".join(_tsp_str(v) for v in values))
        return ()

    def _reset_fn(self, *args: Any) -> tuple:
        self.reset()
        return ()

    def _opc(self) -> tuple:
        self.esr |= 1
        return ()

    def _delay(self, seconds: Any = None) -> tuple:
        if not isinstance(seconds, float) or seconds < 0:
            raise _runtime("bad argument #1 to 'delay' (number expected)")
        self.bench.advance(seconds)
        return ()

    def _error_clear(self) -> tuple:
        self._errors.clear()
        return ()

    def _error_next(self) -> tuple:
        code, text = self.pop_error()
        if code == 0:
            text = "Queue Is Empty"
        severity = 0.0 if code == 0 else 30.0
        return (float(code), text, severity, 0.0)

    # ---- channels ------------------------------------------------------------------------------------------
    def parse_channels(self, spec: Any, allow_slots: bool) -> set[tuple[str, int]]:
        if not isinstance(spec, str):
            raise _runtime("bad argument #1 (string expected)")
        wiring = self.bench.wiring
        n_slots = wiring.slots
        out: set[tuple[str, int]] = set()
        for item in re.split(r"[;,]", spec):
            item = item.strip()
            if not item:
                continue
            low = item.lower()
            if low == "allslots" or re.fullmatch(r"slot\d", low):
                if not allow_slots:
                    raise TspError(-222, f"Parameter error: '{item}' is not allowed here")
                slots = range(1, n_slots + 1) if low == "allslots" else [int(low[4:])]
                for s in slots:
                    if not 1 <= s <= n_slots:
                        raise TspError(-222, f"Parameter error: slot {s} is empty")
                    for r in MATRIX_ROWS:
                        for c in range(1, COLUMNS_PER_SLOT + 1):
                            out.add((r, (s - 1) * COLUMNS_PER_SLOT + c))
                continue
            ends = item.split(":")
            if len(ends) > 2:
                raise TspError(-222, f"Parameter error: bad channel range '{item}'")
            parsed = [self._one_channel(e.strip(), n_slots) for e in ends]
            (s0, r0, c0), (s1, r1, c1) = parsed[0], parsed[-1]
            if s0 != s1 or r1 < r0 or c1 < c0:
                raise TspError(-222, f"Parameter error: bad channel range '{item}'")
            for r in MATRIX_ROWS[MATRIX_ROWS.index(r0):MATRIX_ROWS.index(r1) + 1]:
                for c in range(c0, c1 + 1):
                    out.add((r, (s0 - 1) * COLUMNS_PER_SLOT + c))
        return out

    @staticmethod
    def _one_channel(text: str, n_slots: int) -> tuple[int, str, int]:
        m = _CHANNEL.match(text)
        if not m:
            raise TspError(-222, f"Parameter error: invalid channel '{text}'")
        slot, row, col = int(m.group(1)), m.group(2).upper(), int(m.group(3))
        if not 1 <= slot <= n_slots or row not in MATRIX_ROWS or not 1 <= col <= COLUMNS_PER_SLOT:
            raise TspError(-222, f"Parameter error: channel '{text}' does not exist")
        return slot, row, col

    def _switch(self, close: set, open_: set) -> None:
        refused = close & self.forbidden
        if refused:
            names = ",".join(sorted(self.bench.wiring.channel(r, c) for r, c in refused))
            raise TspError(-222, f"Parameter error: channel {names} is forbidden to close")
        before = set(self.bench.closed)
        if self.bench.set_crosspoints(close, open_):
            for x in set(self.bench.closed) - before:
                self.close_counts[x] = self.close_counts.get(x, 0) + 1
            self.bench.advance(RELAY_SETTLE_SEC)

    def _ordered(self, spec: Any) -> list[tuple[str, int]]:
        """The channels of a list in the order named (each item's channels in slot, row, column order)."""
        if not isinstance(spec, str):
            raise _runtime("bad argument #1 (string expected)")
        out: list[tuple[str, int]] = []
        for item in re.split(r"[;,]", spec):
            if item.strip():
                out += sorted(self.parse_channels(item, allow_slots=True),
                              key=lambda x: ((x[1] - 1) // COLUMNS_PER_SLOT, x[0], x[1]))
        return out

    def _getstate(self, spec: Any = None, mask: Any = None) -> tuple:
        bits = IND_CLOSED if mask is None else int(mask)
        return (",".join(str(IND_CLOSED & bits if x in self.bench.closed else 0) for x in self._ordered(spec)),)

    def _getcount(self, spec: Any = None) -> tuple:
        return (",".join(str(self.close_counts.get(x, 0)) for x in self._ordered(spec)),)

    def _setforbidden(self, spec: Any = None) -> tuple:
        chans = self.parse_channels(spec, allow_slots=True)
        closed = chans & self.bench.closed
        if closed:
            raise TspError(-222, "Parameter error: a closed channel cannot be made forbidden; open it first")
        self.forbidden |= chans
        return ()

    def _clearforbidden(self, spec: Any = None) -> tuple:
        self.forbidden -= self.parse_channels(spec, allow_slots=True)
        return ()

    def _getforbidden(self, spec: Any = None) -> tuple:
        hits = [x for x in self._ordered(spec) if x in self.forbidden]
        return (",".join(self.bench.wiring.channel(r, c) for r, c in hits) if hits else None,)

    def _close(self, spec: Any = None) -> tuple:
        self._switch(self.parse_channels(spec, allow_slots=False), set())
        return ()

    def _open(self, spec: Any = None) -> tuple:
        self._switch(set(), self.parse_channels(spec, allow_slots=True))
        return ()

    def _exclusive_close(self, spec: Any = None) -> tuple:
        wanted = self.parse_channels(spec, allow_slots=False)
        self._switch(wanted, set(self.bench.closed) - wanted)
        return ()

    def _exclusive_slot_close(self, spec: Any = None) -> tuple:
        wanted = self.parse_channels(spec, allow_slots=False)
        slots = {(c - 1) // COLUMNS_PER_SLOT for _, c in wanted}
        others = {x for x in self.bench.closed if (x[1] - 1) // COLUMNS_PER_SLOT in slots} - wanted
        self._switch(wanted, others)
        return ()

    def _channel_reset(self, spec: Any = None) -> tuple:
        return self._open(spec)

    def _getclose(self, spec: Any = None) -> tuple:
        scope = self.parse_channels(spec, allow_slots=True)
        closed = sorted(self.bench.closed & scope, key=lambda x: ((x[1] - 1) // COLUMNS_PER_SLOT, x[0], x[1]))
        if not closed:
            return (None,)
        return (";".join(self.bench.wiring.channel(r, c) for r, c in closed),)


def _tsp_str(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.5e}"
    return str(v)
