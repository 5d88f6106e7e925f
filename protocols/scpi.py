"""SCPI program messages, the instrument side: splitting, header patterns, parameters, errors.

What the emulated instruments need of IEEE 488.2 / SCPI-99, and nothing more:

* a program message is one line; ``;`` separates its units (outside quotes);
* a unit is ``HEADER[?] [param[,param...]]``; a header starting with ``*`` is a common
  command; one starting with ``:`` is absolute; any other is relative to the path of
  the previous unit of the same message (the SCPI compound-command rule: after
  ``:SOUR:VOLT:LEV 1`` the unit ``ILIM 1e-3`` means ``:SOUR:VOLT:ILIM 1e-3``);
* header patterns are written as in the manuals: ``[:SOURce#]:VOLTage[:LEVel]`` --
  upper-case letters are the short form, the whole word the long form, ``[...]``
  an optional node and ``#`` a numeric suffix (``SOUR1``, ``OUTP2``);
* numbers are NR1/NR2/NR3 with optional SI suffix (``50 ns``, ``1.6V``) or the
  keywords ``MIN``, ``MAX``, ``DEF``, ``INF``; booleans ``ON|OFF|1|0``;
* :class:`ScpiError` carries the standard error codes (``-113 Undefined header``,
  ``-222 Data out of range`` ...).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

# Standard SCPI-99 / IEEE 488.2 error messages the emulators produce.
STANDARD_ERRORS: dict[int, str] = {
    0: "No error",
    -100: "Command error",
    -101: "Invalid character",
    -102: "Syntax error",
    -103: "Invalid separator",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -114: "Header suffix out of range",
    -120: "Numeric data error",
    -131: "Invalid suffix",
    -141: "Invalid character data",
    -150: "String data error",
    -200: "Execution error",
    -211: "Trigger ignored",
    -220: "Parameter error",
    -221: "Settings conflict",
    -222: "Data out of range",
    -224: "Illegal parameter value",
    -230: "Data corrupt or stale",
    -240: "Hardware error",
    -310: "System error",
    -350: "Queue overflow",
    -363: "Input buffer overrun",
    -410: "Query INTERRUPTED",
    -420: "Query UNTERMINATED",
}

SCPI_INF = 9.9e37  # what SCPI instruments send for infinity / overflow
SCPI_NAN = 9.91e37


class ScpiError(Exception):
    """An error the instrument puts in its error queue (code and SCPI message)."""

    def __init__(self, code: int, detail: str | None = None):
        self.code = int(code)
        base = STANDARD_ERRORS.get(self.code, "Device-specific error")
        self.text = f"{base};{detail}" if detail else base
        super().__init__(f"{self.code},{self.text}")

    @property
    def is_command_error(self) -> bool:
        """-1xx: the parser could not understand the unit; the rest of the message is discarded."""
        return -199 <= self.code <= -100


# ---- header patterns ---------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    short: str
    long: str
    optional: bool
    suffix: bool

    def matches(self, mnemonic: str) -> bool:
        return mnemonic == self.short or mnemonic == self.long


_WORD = r"[A-Za-z](?:[A-Za-z0-9]*[A-Za-z])?"  # digits only inside a mnemonic (PK2Pk), never at its end
_PATTERN_TOKEN = re.compile(rf"\[:?({_WORD})(#?)\]|:?({_WORD})(#?)")
_INPUT_TOKEN = re.compile(r"^([A-Za-z](?:[A-Za-z0-9_]*[A-Za-z_])?)(\d*)$")


def compile_pattern(pattern: str) -> tuple[Node, ...]:
    """``"[:SOURce#]:VOLTage[:LEVel]"`` -> nodes (short form = the leading upper-case letters)."""
    nodes: list[Node] = []
    pos = 0
    pattern = pattern.strip()
    while pos < len(pattern):
        m = _PATTERN_TOKEN.match(pattern, pos)
        if not m:
            raise ValueError(f"bad SCPI pattern {pattern!r} at {pos}")
        word = m.group(1) or m.group(3)
        suffix = bool(m.group(2) or m.group(4))
        short = re.match(r"[A-Z][A-Z0-9]*(?<!\d)", word)
        if not short:
            raise ValueError(f"pattern node {word!r} has no upper-case short form")
        nodes.append(Node(short.group(0), word.upper(), m.group(1) is not None, suffix))
        pos = m.end()
    return tuple(nodes)


def _match_nodes(nodes: tuple[Node, ...], tokens: list[tuple[str, int | None]], i: int = 0,
                 j: int = 0) -> list[int | None] | None:
    if i == len(nodes):
        return [] if j == len(tokens) else None
    node = nodes[i]
    if j < len(tokens):
        mnemonic, suffix = tokens[j]
        if node.matches(mnemonic) and (suffix is None or node.suffix):
            rest = _match_nodes(nodes, tokens, i + 1, j + 1)
            if rest is not None:
                return [suffix] + rest
    if node.optional:
        rest = _match_nodes(nodes, tokens, i + 1, j)
        if rest is not None:
            return [None] + rest
    return None


def tokenize_header(parts: list[str]) -> list[tuple[str, int | None]]:
    """Header words -> (upper-case mnemonic, numeric suffix or None); ScpiError(-113) if malformed."""
    out = []
    for p in parts:
        m = _INPUT_TOKEN.match(p)
        if not m:
            raise ScpiError(-113, f"malformed header node {p!r}")
        out.append((m.group(1).upper(), int(m.group(2)) if m.group(2) else None))
    return out


def match_pattern(nodes: tuple[Node, ...], tokens: list[tuple[str, int | None]]) -> list[int | None] | None:
    """Suffix per pattern node if ``tokens`` match the pattern, else None."""
    return _match_nodes(nodes, tokens)


# ---- message splitting ---------------------------------------------------------------------
def split_outside_quotes(text: str, sep: str) -> list[str]:
    parts, buf, quote = [], [], None
    for ch in text:
        if quote:
            buf.append(ch)
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            buf.append(ch)
        elif ch == sep:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    if quote:
        raise ScpiError(-150, "unterminated string")
    parts.append("".join(buf))
    return parts


@dataclass
class Unit:
    """One program message unit."""

    header: str  # as received, without the '?'
    query: bool
    params: list[str] = field(default_factory=list)
    common: bool = False
    absolute: bool = False

    @property
    def parts(self) -> list[str]:
        return [p for p in self.header.lstrip(":").split(":")]


def parse_unit(text: str) -> Unit | None:
    text = text.strip()
    if not text:
        return None
    m = re.match(r"^(:?\*?[A-Za-z0-9_:]+)(\?)?(?:\s+(.*))?$", text, re.DOTALL)
    if not m:
        raise ScpiError(-102, f"cannot parse {text[:40]!r}")
    header, query, rest = m.group(1), bool(m.group(2)), m.group(3)
    params = [p.strip() for p in split_outside_quotes(rest, ",")] if rest and rest.strip() else []
    if any(p == "" for p in params):
        raise ScpiError(-103, "empty parameter")
    common = header.lstrip(":").startswith("*")
    if common:
        header = header.lstrip(":")
    if "::" in header or header.endswith(":"):
        raise ScpiError(-102, f"bad header {header!r}")
    return Unit(header, query, params, common, header.startswith(":"))


# ---- parameters -------------------------------------------------------------------------------
_NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)$")
_SUFFIX_MULT = {
    "": 1.0, "V": 1.0, "MV": 1e-3, "UV": 1e-6, "KV": 1e3,
    "A": 1.0, "MA": 1e-3, "UA": 1e-6, "NA": 1e-9, "PA": 1e-12,
    "S": 1.0, "MS": 1e-3, "US": 1e-6, "NS": 1e-9, "PS": 1e-12,
    "HZ": 1.0, "KHZ": 1e3, "MHZ": 1e6, "MAHZ": 1e6, "GHZ": 1e9,
    "OHM": 1.0, "KOHM": 1e3, "MOHM": 1e6,
    "PCT": 1.0, "DEG": 1.0, "W": 1.0,
}


def parse_number(text: str, *, minimum: float | None = None, maximum: float | None = None,
                 default: float | None = None, allow_inf: bool = False, name: str = "value") -> float:
    """NRf (with SI suffix) or MIN/MAX/DEF/INF; ScpiError -104/-131/-222 as a real instrument answers."""
    t = text.strip().strip("'\"").upper()
    keywords = {"MIN": minimum, "MINIMUM": minimum, "MAX": maximum, "MAXIMUM": maximum,
                "DEF": default, "DEFAULT": default}
    if t in keywords:
        value = keywords[t]
        if value is None:
            raise ScpiError(-224, f"{t} not allowed for {name}")
        return float(value)
    if t in ("INF", "INFINITY", "+INF"):
        if not allow_inf:
            raise ScpiError(-224, f"INF not allowed for {name}")
        return math.inf
    if t in ("NINF", "-INF"):
        raise ScpiError(-224, f"-INF not allowed for {name}")
    m = _NUMBER.match(t)
    if not m:
        raise ScpiError(-104, f"{name} needs a number, got {text!r}")
    mult = _SUFFIX_MULT.get(m.group(2))
    if mult is None:
        raise ScpiError(-131, f"unknown unit {m.group(2)!r}")
    value = float(m.group(1)) * mult
    if not math.isfinite(value):
        raise ScpiError(-120, f"{name} is not finite")
    if allow_inf and value >= SCPI_INF * 0.99:
        return math.inf
    if minimum is not None and value < minimum - 1e-12 * abs(minimum):
        raise ScpiError(-222, f"{name} {value:g} below minimum {minimum:g}")
    if maximum is not None and value > maximum + 1e-12 * abs(maximum):
        raise ScpiError(-222, f"{name} {value:g} above maximum {maximum:g}")
    return value


def parse_bool(text: str) -> bool:
    t = text.strip().upper()
    if t in ("ON", "1"):
        return True
    if t in ("OFF", "0"):
        return False
    try:
        return round(float(t)) != 0
    except (ValueError, OverflowError):  # OverflowError: "INF" and "NAN" are floats but not booleans
        raise ScpiError(-224, f"boolean expected (ON|OFF|1|0), got {text!r}") from None


def parse_choice(text: str, choices: dict[str, str]) -> str:
    """Character data matched against ``{"VOLTage": "VOLT", ...}`` (short or long form) -> value.

    A compound choice (``"CURRent:DC"``) matches node by node, each in its short or long form:
    ``CURR:DC``, ``CURRENT:DC`` and ``CURR:dc`` all select it.
    """
    given = text.strip().strip("'\"").upper().split(":")
    for pattern, value in choices.items():
        nodes = pattern.split(":")
        if len(nodes) == len(given) and all(
                g in (re.match(r"[A-Z0-9]*", n).group(0) or n.upper(), n.upper()) for g, n in zip(given, nodes)):
            return value
    raise ScpiError(-224, f"{text!r} is not one of {', '.join(choices)}")


def unquote(text: str) -> str:
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    return t


def fmt_float(x: float, digits: int = 6) -> str:
    """NR3 as SCPI instruments send it (``+1.000000E-04`` style without the plus sign)."""
    if math.isinf(x):
        return f"{SCPI_INF if x > 0 else -SCPI_INF:.{digits}E}"
    if math.isnan(x):
        return f"{SCPI_NAN:.{digits}E}"
    return f"{x:.{digits}E}"
