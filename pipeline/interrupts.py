"""SIGINT and SIGTERM end a run honestly: as an exception, so every ``finally`` records what happened.

WHY: SIGTERM's default action kills the process on the spot — ``run.json`` stayed ``running`` with ``rows: 0``
while 5 rows were on disk, and nothing was printed. Both signals are turned into :class:`Interrupted` (a
``KeyboardInterrupt``, so code that already handles Ctrl-C handles SIGTERM the same way); the entry points
(``stage_main``, ``python -m pipeline``) print one line with what is kept and the command that resumes this very
run, and exit 128 + the signal number (130, 143) like a shell would report it.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop (``signum``); ``message`` says what was kept when a stage adds it."""

    def __init__(self, signum: int = signal.SIGINT, message: str = "") -> None:
        super().__init__(message or f"interrupted by {signal_name(signum)}")
        self.signum = signum
        self.message = message

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name


def signum_of(exc: BaseException) -> int:
    """The signal behind an interruption (a plain KeyboardInterrupt is Ctrl-C)."""
    return exc.signum if isinstance(exc, Interrupted) else signal.SIGINT


def _raise(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """SIGINT/SIGTERM raise :class:`Interrupted` in the main thread for the block (no-op in other threads)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def command_line(argv: Sequence[str]) -> str:
    """A command for the user to paste (every word shell-quoted: user text never becomes shell syntax)."""
    return shlex.join(list(argv))
