"""Board addresses in a sweep: which are emulated, the Ray resource of a physical board, folder keys.

Split from :mod:`hil.sweep_spec`, which expands a spec's points onto these addresses.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode


def safe_name(text: str) -> str:
    """``text`` with every run of characters other than letters, digits, ``. = + , -`` made one ``_``."""
    return re.sub(r"[^A-Za-z0-9.=+,-]+", "_", text).strip("_") or "_"


def is_emulator(address: str) -> bool:
    return address == "emu" or address.startswith("emu?")


def board_resource(address: str) -> str | None:
    """The Ray resource a point on a physical board needs (None for an emulator).

    Rule: ``board:`` + the address without its options (``?baud=...`` does not change the board), with
    ``serial:socket://HOST:PORT`` written ``tcp_HOST_PORT``, ``serial:/dev/X`` written ``serial_dev_X``,
    ``visa:PATH`` written ``visa_`` + the bench file's name without ``.toml``, and every character other
    than letters, digits, ``.`` and ``-`` made ``_``.
    """
    if is_emulator(address):
        return None
    head = address.partition("?")[0]
    if head.startswith("serial:socket://"):
        body = "tcp_" + head[len("serial:socket://"):]
    elif head.startswith("visa:"):
        body = "visa_" + re.sub(r"\.toml$", "", Path(head[len("visa:"):]).name)
    elif head.startswith("serial:"):
        rest = head[len("serial:"):]
        body = "serial_" + rest.replace("://", "_")
    else:
        body = head
    return "board:" + (re.sub(r"[^A-Za-z0-9.-]+", "_", body).strip("_") or "_")


def with_query(address: str, **updates: str) -> str:
    head, _, query = address.partition("?")
    params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in updates]
    return head + "?" + urlencode(params + list(updates.items()))


def board_key(address: str) -> str:
    """A folder name for a board: its address, a device file named by its file name only."""
    head, _, query = address.partition("?")
    params = [(k, Path(v).stem if k == "config" else v) for k, v in parse_qsl(query, keep_blank_values=True)]
    return safe_name(head + "".join(f",{k}={v}" for k, v in params))
