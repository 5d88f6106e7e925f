"""Declarative settings of the emulated SCPI instruments: one :class:`Setting` per settable parameter.

The emulator-side counterpart of the drivers' ``InstrumentProperty``: a setting is data -- its
header pattern, where its value lives, its type, range or choices, ``DEFault`` value and unit --
and :class:`~firmware_stub.scpi.instrument.ScpiInstrument` generates its query and set handling::

    settings = (
        Setting("[:SOURce#]:VOLTage:ILIMit[:LEVel]", "ilim", NUMBER, minimum=1e-9, maximum=1.05,
                default=1.05e-4, label="current limit", unit="A", holder="_channel"),
    )

A query answers the stored value (a number in the instrument's number format, a boolean as
``1``/``0``, an integer in NR1, a choice as its stored short form); a set parses one parameter
(``MIN``/``MAX``/``DEF`` included, errors as the real instrument reports them) and stores it.
Settings whose set has side effects (a range that turns auto range off, a level checked
against the range) stay handler methods.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from firmware_stub.scpi.instrument import Call, ScpiInstrument

NUMBER, INTEGER, BOOLEAN, CHOICE = "number", "integer", "boolean", "choice"


@dataclass(frozen=True, eq=False)
class Setting:
    """One settable parameter of an emulated instrument.

    ``attr`` names the attribute holding the value, on the instrument or on the object the
    instrument method named ``holder`` returns for the call (a channel; the method also checks
    the header's numeric suffix); with ``key`` the attribute is a dict and the value its entry
    (one per source or sense function).
    """

    pattern: str
    attr: str
    kind: str
    key: Hashable | None = None
    minimum: float | None = None
    maximum: float | None = None
    default: float | None = None
    choices: Mapping[str, str] | None = None
    label: str = "value"
    unit: str = ""
    holder: str | None = None

    def handle(self, inst: ScpiInstrument, c: Call) -> str | None:
        owner = inst if self.holder is None else getattr(inst, self.holder)(c)
        if c.query:
            value = getattr(owner, self.attr)
            return self._reply(inst, value if self.key is None else value[self.key])
        value = self._parse(c)
        if self.key is None:
            setattr(owner, self.attr, value)
        else:
            getattr(owner, self.attr)[self.key] = value
        return None

    def _parse(self, c: Call) -> Any:
        if self.kind == BOOLEAN:
            return c.boolean(0)
        if self.kind == CHOICE:
            return c.choice(0, dict(self.choices or {}))
        value = c.number(0, minimum=self.minimum, maximum=self.maximum, default=self.default, name=self.label)
        return int(value) if self.kind == INTEGER else value

    def _reply(self, inst: ScpiInstrument, value: Any) -> str:
        if self.kind == BOOLEAN:
            return "1" if value else "0"
        if self.kind == NUMBER:
            return inst.format_number(value)
        return str(value)
