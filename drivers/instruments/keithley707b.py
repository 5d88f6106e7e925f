"""Keithley 707B switching matrix driver (TSP commands).

The 707B is programmed in TSP: ``channel.close("1A01,1B05")``, ``channel.open("allslots")``,
``channel.exclusiveclose(...)``, ``print(channel.getclose("allslots"))``,
``errorqueue.count`` / ``errorqueue.next()``; identity and status through the IEEE 488.2
common commands.  :meth:`Keithley707B.route` closes exactly the given crosspoints and
reads back what is closed together with the error count in the same exchange, so a
route is verified (and the relays have settled) before any source is turned on.
"""

from __future__ import annotations

import re
from typing import Iterable

from drivers.errors import InstrumentError
from drivers.instruments.scpi_property import InstrumentProperty, VisaInstrument, one_of

_CHANNEL = re.compile(r"^[1-6][A-Ha-h](0[1-9]|1[0-2])$")
_RULES = {"BREAK_BEFORE_MAKE": 1, "MAKE_BEFORE_BREAK": 2, "OFF": 0}


def check_channels(channels: Iterable[str]) -> list[str]:
    out = []
    for ch in channels:
        if not _CHANNEL.match(ch):
            raise ValueError(f"{ch!r} is not a 707B crosspoint (slot 1-6, row A-H, column 01-12)")
        out.append(ch.upper())
    return out


def _parse_rule(text: str) -> str:
    value = int(round(float(text)))
    return {v: k for k, v in _RULES.items()}[value]


class Keithley707B(VisaInstrument):
    """A Keithley 707B (or 708B) on any VISA resource."""

    label = "Keithley 707B switch matrix"
    expected_model = "Keithley 707B/708B switching matrix (*IDN? ... Model 707B ...)"
    idn_pattern = re.compile(r"KEITHLEY.*MODEL 70[78]B\b", re.I)

    connect_rule = InstrumentProperty("print(channel.connectrule)", "channel.connectrule = channel.{}", kind=str,
                                      parse=_parse_rule, validator=one_of(*_RULES),
                                      doc="break-before-make, make-before-break or off")

    def next_error(self) -> tuple[int, str]:
        reply = self.query("print(errorqueue.next())")
        parts = reply.split("\t")
        try:
            return int(float(parts[0])), parts[1] if len(parts) > 1 else ""
        except ValueError:
            raise InstrumentError(f"{self.label} answered errorqueue.next() with {reply!r}") from None

    def errors(self, max_entries: int = 64) -> list[tuple[int, str]]:
        count = int(self.query_number("print(errorqueue.count)"))
        return [self.next_error() for _ in range(min(count, max_entries))]

    def configure(self) -> None:
        """Every crosspoint open, break-before-make switching; errors checked."""
        self.write("channel.open(\"allslots\")")
        self.connect_rule = "BREAK_BEFORE_MAKE"
        self.check_errors("after configuring the matrix")

    def closed_channels(self) -> set[str]:
        reply = self.query('print(channel.getclose("allslots"))').strip()
        return _parse_closed(reply)

    def route(self, channels: Iterable[str]) -> None:
        """Close exactly ``channels`` (everything else opens first); verify the result and the error queue."""
        wanted = check_channels(channels)
        reply = self.query(f'channel.exclusiveclose("{",".join(wanted)}") '
                           'print(channel.getclose("allslots"), errorqueue.count)')
        closed_text, _, count_text = reply.partition("\t")
        try:
            count = int(float(count_text))
        except ValueError:
            count = 1
        if count:
            self.check_errors(f"while routing {','.join(wanted)}")
            raise InstrumentError(f"{self.label}: routing {','.join(wanted)} failed ({reply!r})")
        closed = _parse_closed(closed_text)
        if closed != set(wanted):
            raise InstrumentError(f"{self.label}: asked to close {sorted(wanted)} but {sorted(closed)} are closed")

    def open_all(self, confirm: bool = False) -> None:
        """Open every crosspoint; with ``confirm``, return only once the relays have opened (``*OPC?``)."""
        self.write('channel.open("allslots")')
        if confirm:
            self.operation_complete()

    def shutdown(self) -> None:
        """Every crosspoint open (safe idle), confirmed by ``*OPC?``."""
        self.open_all(confirm=True)


def _parse_closed(text: str) -> set[str]:
    text = text.strip()
    if not text or text == "nil":
        return set()
    return {c.strip().upper() for c in re.split(r"[;,]", text) if c.strip()}
