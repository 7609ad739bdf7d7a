"""Signals that end a command: SIGTERM and SIGHUP unwind the stack like
Ctrl-C (KeyboardInterrupt), so that every ``finally`` runs and no temporary
file or partial output outlives the process."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

__all__ = ["Terminated", "orderly_termination"]


class Terminated(BaseException):
    """SIGTERM (or SIGHUP) received: unwinds the stack like KeyboardInterrupt,
    so that temporary files are removed on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, _frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def orderly_termination() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Terminated` for the duration, so
    that every ``finally`` (temporary files, partial outputs) runs; the
    previous handlers come back after. Only in the main thread."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _terminate) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
