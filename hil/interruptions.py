"""What the command line does when a command is interrupted: never a dead end, never a swallowed Ctrl-C.

:func:`resume_command` renders the exact command that continues the interrupted
one (the options the user typed, plus ``--resume``), for the message every
interruption prints (Ctrl-C, a lost link, a full disk).  :func:`sigint_guard`
makes sure a Ctrl-C is never lost: Python ignores an exception raised where it
cannot propagate (a ``__del__``, a weakref callback during garbage collection),
so a Ctrl-C landing there would let the command finish with status 0; the guard
remembers every Ctrl-C and raises ``KeyboardInterrupt`` again when its block ends.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
from collections.abc import Iterator

import click

PROG = "hil"


ONE_SHOT_OPTIONS = frozenset({"assume_applied", "allow_code_change"})
"""Options that answer a question about one interruption (``hil train --assume-applied``, ``--allow-code-change``):
never repeated in the command that resumes a later one."""


def _typed_options(ctx: click.Context, keep: set[str] | None = None) -> list[str]:
    parts: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name is None or param.name in ONE_SHOT_OPTIONS:
            continue
        if keep is not None and param.name not in keep:
            continue
        if ctx.get_parameter_source(param.name) != click.core.ParameterSource.COMMANDLINE:
            continue
        value = ctx.params.get(param.name)
        if param.is_flag:
            if value:
                parts.append(param.opts[0])
        elif value is not None:
            parts += [param.opts[0], str(value)]
    return parts


def resume_command(ctx: click.Context, keep: set[str] | None = None) -> str:
    """The command line that resumes the command of ``ctx``: what the user typed, with ``--resume``.

    ``keep``: only these options of the command itself (by parameter name); the options
    of the enclosing groups (``hil --limits FILE``) are always kept.
    """
    chain = []
    c: click.Context | None = ctx
    while c is not None:
        chain.append(c)
        c = c.parent
    parts = [PROG]
    for c in reversed(chain):
        if c.parent is not None:
            parts.append(c.info_name or c.command.name or "")
        parts += _typed_options(c, keep if c is ctx else None)
    if "--resume" not in parts:
        parts.append("--resume")
    return shlex.join(parts)


@contextlib.contextmanager
def sigint_guard() -> Iterator[None]:
    """Ctrl-C raises ``KeyboardInterrupt`` as usual, and again at the end of the block if it was swallowed.

    Only the first Ctrl-C raises: a second one while the command is already stopping
    must not break the clean-up (the board's safe idle) nor the message that follows,
    so once one was seen Ctrl-C stays ignored after the block (the command is ending).
    """
    hits: list[int] = []

    def on_sigint(signum, frame):
        hits.append(signum)
        if len(hits) == 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN if hits else previous)
    if hits:
        raise KeyboardInterrupt
