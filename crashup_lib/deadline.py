"""A hard deadline for one cluster action: Pacemaker kills an agent at its timeout, so we stop first, cleanly.

SIGALRM raises in the main thread even while a library blocks in a socket wait (pyghmi has no timeout setting of
its own; notes/ipmi.md measured a clean interrupt at exactly the deadline). DeadlineExceeded derives from
BaseException so that libraries' broad `except Exception` blocks cannot swallow it.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time


class DeadlineExceeded(BaseException):
    def __init__(self, what: str, seconds: float):
        super().__init__(f"{what} timed out after {seconds:g}s")
        self.what = what
        self.seconds = seconds


_expires_at: float | None = None


def remaining(default: float | None = None) -> float | None:
    """Seconds left before the current deadline (never below 0), or `default` when none is set."""
    if _expires_at is None:
        return default
    return max(0.0, _expires_at - time.monotonic())


@contextlib.contextmanager
def deadline(seconds: float | None, what: str):
    """Raise DeadlineExceeded in the main thread once `seconds` have passed. No-op for None or other threads."""
    global _expires_at
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expired(signum, frame):
        raise DeadlineExceeded(what, seconds)

    previous = signal.signal(signal.SIGALRM, _expired)
    _expires_at = time.monotonic() + seconds
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _expires_at = None
