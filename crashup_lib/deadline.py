"""Hard deadlines for cluster actions: Pacemaker kills an agent at its timeout, so we stop first, cleanly.

SIGALRM raises in the main thread even while a library blocks in a socket wait (pyghmi has no timeout setting of
its own; notes/ipmi.md measured a clean interrupt at exactly the deadline). DeadlineExceeded derives from
BaseException so that libraries' broad `except Exception` blocks cannot swallow it.

Deadlines nest: an action's deadline holds a login's, which holds a request's. The innermost that expires first
raises, and it names itself, so the message says what was slow.
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


# the open deadlines, outermost first: (expires_at, what, seconds)
_stack: list[tuple[float, str, float]] = []


def remaining(default: float | None = None) -> float | None:
    """Seconds left before the nearest open deadline (never below 0), or `default` when none is open."""
    if not _stack:
        return default
    return max(0.0, min(e for e, _, _ in _stack) - time.monotonic())


def _arm() -> None:
    """Point the timer at the nearest open deadline."""
    if not _stack:
        signal.setitimer(signal.ITIMER_REAL, 0)
        return
    nearest = min(e for e, _, _ in _stack)
    signal.setitimer(signal.ITIMER_REAL, max(0.001, nearest - time.monotonic()))


def _expired(signum, frame):
    now = time.monotonic()
    due = [entry for entry in _stack if entry[0] <= now + 0.001]
    if not due:                               # early wake-up (timer granularity): re-arm for the rest
        _arm()
        return
    _, what, seconds = max(due, key=lambda entry: _stack.index(entry))    # the innermost due deadline
    raise DeadlineExceeded(what, seconds)


@contextlib.contextmanager
def deadline(seconds: float | None, what: str):
    """Raise DeadlineExceeded in the main thread once `seconds` have passed. No-op for None/0 or other threads."""
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = not _stack
    previous = signal.signal(signal.SIGALRM, _expired) if outermost else None
    entry = (time.monotonic() + seconds, what, seconds)
    _stack.append(entry)
    _arm()
    try:
        yield
    finally:
        _stack.remove(entry)
        _arm()
        if outermost:
            signal.signal(signal.SIGALRM, previous)
