"""Board addresses (``--board``) and :func:`open_board`.

=====================================================  ==================================================
address                                                meaning
=====================================================  ==================================================
``emu`` / ``emu?seed=1&rows=128&cols=128&config=F``    in-process emulator through the real codec
``emu?preset=paper&config=F``                          a shipped device preset, F overriding its fields
``serial:/dev/ttyUSB0?baud=3000000``                   FPGA controller on a serial port
``serial:socket://127.0.0.1:7777``                     anything pyserial's ``serial_for_url`` opens
=====================================================  ==================================================

Driver options that any serial address accepts in its query: ``baud``,
``timeout`` (seconds of silence before a poll), ``retries`` (polls without progress
before giving up), ``chunk`` (chunk payload bytes of a version-3 session, 64..16384) and
``window`` (requests in flight at once, 1..8, version 5; 1 turns pipelining off);
other query keys are passed on to pyserial's URL handler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode

from drivers.board import Board
from drivers.errors import AddressError
from drivers.limits import SafetyLimits
from protocols.framing import MAX_PAYLOAD
from protocols.session import CHUNK_BYTES, DEFAULT_WINDOW, MAX_IN_FLIGHT, MIN_CHUNK_BYTES

EMU_KEYS = {"seed", "rows", "cols", "config", "preset", "timeout", "retries", "window"}
SERIAL_KEYS = {"baud", "timeout", "retries", "chunk", "window"}


def _split_query(text: str) -> tuple[str, dict[str, str]]:
    head, _, query = text.partition("?")
    try:
        params = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise AddressError(f"cannot parse the options {query!r}: write them as key=value&key=value") from None
    return head, params


def _number(params: dict[str, str], key: str, kind: type, default, address: str):
    if key not in params:
        return default
    try:
        value = kind(params[key])
    except ValueError:
        raise AddressError(f"{address!r}: {key}={params[key]!r} is not a valid {kind.__name__}") from None
    if kind is float and not math.isfinite(value):
        raise AddressError(f"{address!r}: {key} must be a finite number")
    if value < 0 if kind is int else value <= 0:
        raise AddressError(f"{address!r}: {key} must be positive")
    return value


def _window(params: dict[str, str], address: str) -> int:
    window = _number(params, "window", int, DEFAULT_WINDOW, address)
    if not 1 <= window <= MAX_IN_FLIGHT:
        raise AddressError(f"{address!r}: window must be 1..{MAX_IN_FLIGHT} requests, not {window}")
    return window


def _open_emu(address: str, limits: SafetyLimits | None) -> Board:
    from drivers.emulator_board import open_emulator_board

    _, params = _split_query(address)
    unknown = set(params) - EMU_KEYS
    if unknown:
        raise AddressError(f"{address!r}: unknown option(s) {sorted(unknown)}; valid: {sorted(EMU_KEYS)}")
    rows = _number(params, "rows", int, 128, address)
    cols = _number(params, "cols", int, 128, address)
    if rows < 1 or cols < 1 or rows * cols > 4096 * 4096:
        raise AddressError(f"{address!r}: rows and cols must be >= 1 and rows*cols at most 4096*4096")
    return open_emulator_board(
        address, rows, cols, seed=_number(params, "seed", int, 0, address), preset=params.get("preset", "default"),
        config=params.get("config"), limits=limits, timeout_sec=_number(params, "timeout", float, 2.0, address),
        retries=_number(params, "retries", int, 5, address), window=_window(params, address))


def _open_serial(address: str, limits: SafetyLimits | None) -> Board:
    from drivers.fpga import FpgaBoard
    from drivers.links import SerialLink

    target, params = _split_query(address[len("serial:"):])
    if not target:
        raise AddressError("serial: needs a device path or URL, e.g. serial:/dev/ttyUSB0 or "
                           "serial:socket://127.0.0.1:7777")
    passthrough = {k: v for k, v in params.items() if k not in SERIAL_KEYS}
    url = target + ("?" + urlencode(passthrough) if passthrough else "")
    baud = _number(params, "baud", int, 3_000_000, address)
    timeout_sec = _number(params, "timeout", float, 2.0, address)
    retries = _number(params, "retries", int, 5, address)
    chunk = _number(params, "chunk", int, CHUNK_BYTES, address)
    if not MIN_CHUNK_BYTES <= chunk <= MAX_PAYLOAD:
        raise AddressError(f"{address!r}: chunk must be {MIN_CHUNK_BYTES}..{MAX_PAYLOAD} bytes, not {chunk}")
    return FpgaBoard(SerialLink(url, baudrate=baud), limits, timeout_sec=timeout_sec, retries=retries, address=address,
                     chunk_bytes=chunk, window=_window(params, address))


def _open_visa(address: str, limits: SafetyLimits | None) -> Board:
    from drivers.visa_bench import VisaBenchBoard

    path = address[len("visa:"):]
    if not path:
        raise AddressError("visa: needs a bench file, e.g. visa:bench.toml")
    return VisaBenchBoard.from_file(path, limits, address=address)


OPENERS: dict[str, Callable[[str, SafetyLimits | None], Board]] = {
    "emu": _open_emu,
    "serial": _open_serial,
    "visa": _open_visa,
}
"""One opener per address scheme (the part before ``:`` or ``?``; a bare ``emu`` is its own scheme)."""


def address_scheme(address: str) -> str:
    """``emu``, ``serial`` or ``visa`` for a well-formed address ('' for anything else)."""
    if address == "emu" or address.startswith("emu?"):
        return "emu"
    scheme, sep, _ = address.partition(":")
    return scheme if sep and scheme in OPENERS and scheme != "emu" else ""


def open_board(address: str, limits: SafetyLimits | None = None) -> Board:
    """Open the board at ``address``; the caller closes it (use it as a context manager)."""
    opener = OPENERS.get(address_scheme(address))
    if opener is None:
        raise AddressError(
            f"unknown board address {address!r}; use 'emu[?seed=..&rows=..&cols=..&preset=NAME&config=FILE]', "
            "'serial:/dev/ttyUSB0[?baud=..]', 'serial:socket://HOST:PORT' or 'visa:BENCH.toml'"
        )
    return opener(address, limits)
